"""The run side (starting, supervising and stopping tritonserver) never imports the build side
(writing a repository or an image context), at any depth: checked on the source, so that it
holds whatever is imported first. (``towhee_rt/__init__.py``, the public API of both sides, is
left out: every module of the package runs it.)"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "towhee_rt"
RUN_SIDE = ("triton.server", "triton.process", "triton.launch_plan", "triton.lifetime",
            "triton.repository_check", "triton.commands", "triton.flags", "triton.ports",
            "triton.server_log", "triton.embedded", "triton.procs", "triton.admin",
            "triton.supervisor", "triton.supervisor_main", "cli_serve")
BUILD_SIDE = ("triton.repository", "triton.config", "triton.docker", "build", "pipeline",
              "op_config", "shipping", "registry", "function_operator")


def _imports(module: str) -> Set[str]:
    """The towhee_rt modules ``module`` (dotted, below towhee_rt) imports anywhere in it."""
    path = PACKAGE / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE / module.replace(".", "/") / "__init__.py"
    package = module.rsplit(".", 1)[0] if "." in module and path.name != "__init__.py" \
        else ("" if "." not in module and path.name != "__init__.py" else module)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("towhee_rt."):
                target = node.module[len("towhee_rt."):]
            else:
                continue
            found.add(target)
            found.update(f"{target}.{alias.name}" if target else alias.name
                         for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name[len("towhee_rt."):] for a in node.names
                         if a.name.startswith("towhee_rt."))
    # Importing a.b.c runs the packages a and a.b first (towhee_rt itself aside: importing
    # anything of it runs its __init__, which is the public API of both sides).
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {m for m in found | parents if _exists(m)}


def _exists(module: str) -> bool:
    base = PACKAGE / module.replace(".", "/")
    return bool(module) and (base.with_suffix(".py").exists() or (base / "__init__.py").exists())


def _closure(start: str) -> Dict[str, str]:
    """Every towhee_rt module reachable from ``start`` -> the module that imports it."""
    seen, todo = {start: ""}, [start]
    while todo:
        current = todo.pop()
        for module in _imports(current):
            if module not in seen:
                seen[module] = current
                todo.append(module)
    return seen


@pytest.mark.parametrize("module", RUN_SIDE)
def test_run_side_does_not_import_the_build_side(module):
    reached = _closure(module)
    wrong = {m: by for m, by in reached.items() if m in BUILD_SIDE}
    assert not wrong, f"{module} reaches build-side modules (module: imported by): {wrong}"


def test_the_check_sees_imports():
    assert "triton.process" in _closure("triton.server")
    assert "triton.repository" in _closure("cli_build")
