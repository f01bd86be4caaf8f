"""No import cycles among the modules of towhee_rt (backends/ included) and of bench/.

Read statically from the source: an edge A -> B for each import of B that runs when A loads
(module level and class bodies; not inside functions, not under ``if TYPE_CHECKING:``).
Importing a submodule also loads its parent packages; those implicit edges are left out (a
package's ``__init__`` that imports its submodules is the usual shape, not a cycle), but
``from . import name`` of a name that the package's ``__init__`` defines is an edge to it.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Package name -> its directory (backends/ is installed as towhee_rt.backends, and
#: model_repo_templates/ as towhee_rt.model_repo_templates).
PACKAGES = {
    "towhee_rt": {"towhee_rt": ROOT / "towhee_rt", "towhee_rt.backends": ROOT / "backends",
                  "towhee_rt.model_repo_templates": ROOT / "model_repo_templates"},
    "bench": {"bench": ROOT / "bench"},
}


def module_files(roots: Dict[str, Path]) -> Dict[str, Path]:
    """Module name -> source file, for every module under ``roots``."""
    modules = {}
    for package, folder in roots.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if any(part.startswith(".") for part in parts):
                continue  # e.g. bench/.venv-infinity: a peer's own venv, not project source
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package] + parts)] = path
    return modules


def _load_time_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """The statements that run when the module loads (not function bodies)."""
    stack: List[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The modules of ``modules`` that ``name`` imports when it loads."""
    is_package = path.name == "__init__.py"
    found: Set[str] = set()
    for node in _load_time_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from M import x": x may be a submodule of M; otherwise it is defined in M.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle (as a path back to its start) per strongly connected component (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(sorted(c), graph) for c in components]


def _cycle_in(component: List[str], graph: Dict[str, Set[str]]) -> List[str]:
    """A path from the component's first module back to itself, inside the component."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    return component


def import_graph(roots: Dict[str, Path]) -> Dict[str, Set[str]]:
    modules = module_files(roots)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycles(package):
    cycles = find_cycles(import_graph(PACKAGES[package]))
    assert not cycles, "import cycles (break each by moving what both sides need into a " \
                       "module of its own):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_check_finds_a_cycle(tmp_path):
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("from .c import thing\n\ndef f():\n    from . import a\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from .a import x\nfrom .a import y\nthing = 1\n")
    graph = import_graph({"pkg": tmp_path})
    assert graph["pkg.b"] == {"pkg.c"}  # the import inside f() runs later, not at load
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
