"""The code that ships into repositories and images (towhee_rt.shipped) runs without towhee_rt.

Three checks: every shipped file says so (its ``# SHIPPED:`` first line) and nothing else does;
no shipped module imports towhee_rt (the stand-in, which *is* towhee_rt in a served model,
aside) or a heavy library at module level; and each tree, copied the way a generated repository
or image lays it out, imports in a Python where towhee_rt cannot be imported.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import towhee_rt as towhee
from towhee_rt import shipped
from towhee_rt.triton import docker

from ..user_ops import text_ops  # noqa: F401 - registers test_text.*

ROOT = Path(__file__).resolve().parents[2]
OURS = [f.source for tree in shipped.TREES for f in tree.files]
TEMPLATES = [shipped.TEMPLATES_DIR / name for name in shipped.TEMPLATES]
#: Third-party packages a shipped module may import at module level; anything heavier (torch,
#: DALI, tensorrt, the model libraries) is imported inside the functions that need it.
_MODULE_LEVEL_OK = {"numpy", "towhee_ops", "triton_python_backend_utils"}
_HEAVY = ("torch", "tensorrt", "nvidia.dali", "timm", "open_clip", "transformers",
          "sentence_transformers", "onnxruntime", "onnx", "cv2", "tritonclient")


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", OURS + TEMPLATES, ids=_id)
def test_every_shipped_file_carries_the_marker(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith(shipped.MARKER), (
        f"{_id(path)} ships ({shipped.__name__} lists it) but its first line is {first!r}: "
        f"start it with '{shipped.MARKER} copied verbatim into ...'")


def test_only_shipped_files_carry_the_marker():
    listed = set(OURS) | set(TEMPLATES)
    marked = {p for folder in ("towhee_rt", "backends", "model_repo_templates")
              for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix != ".pyc"
              and p.read_text(errors="replace").startswith(shipped.MARKER)}
    assert not marked - listed, (
        f"{sorted(map(_id, marked - listed))} say they ship but towhee_rt.shipped does not list "
        f"them: add them to a tree there, or drop the marker")


def test_every_backend_module_ships():
    assert {f.source.name for f in shipped.OPERATORS.files} == {
        p.name for p in shipped.BACKENDS_DIR.glob("*.py")}


def _imports(tree: ast.AST, module_level_only: bool):
    """(line, top-level name) of every absolute import in ``tree``."""
    nodes = ast.walk(tree) if not module_level_only else [
        n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                       ast.ClassDef))
        for n in ast.walk(top)]
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            yield node.lineno, node.module


@pytest.mark.parametrize("path", [p for p in OURS if p.suffix == ".py"], ids=_id)
def test_shipped_modules_do_not_import_towhee_rt_or_heavy_libraries_at_load(path):
    tree = ast.parse(path.read_text(), str(path))
    if path not in shipped.STAND_IN.sources:
        found = [f"line {line}: {name}" for line, name in _imports(tree, False)
                 if name.split(".")[0] == "towhee_rt"]
        assert not found, (f"{_id(path)} ships where towhee_rt is not installed but imports "
                           f"{found}: import its sibling modules relatively instead")
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    heavy = [f"line {line}: {name}" for line, name in _imports(tree, True)
             if name.split(".")[0] not in stdlib | _MODULE_LEVEL_OK]
    assert not heavy, (f"{_id(path)} imports {heavy} when it loads; import third-party "
                       f"libraries other than numpy inside the functions that use them")


# -- each tree imported where it lands, without towhee_rt ---------------------------------------
#: Run with ``python -I`` (no PYTHONPATH, no user site, not the checkout on sys.path) from a
#: directory outside the checkout. towhee_rt is installed in this venv (editable), so a finder
#: placed first refuses it, except the stand-in package found in the allowed directory.
_PROBE = textwrap.dedent("""
    import importlib, importlib.machinery, importlib.util, json, sys
    mode, where, allowed = sys.argv[1], sys.argv[2], sys.argv[3]

    class NoTowheeRT:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] != 'towhee_rt':
                return None
            if name == 'towhee_rt' and allowed:
                return importlib.machinery.PathFinder.find_spec(name, [allowed])
            raise ImportError('shipped code imported %s, which is not installed where it '
                              'runs' % name)

    sys.meta_path.insert(0, NoTowheeRT())
    sys.path[:0] = [where] + sys.argv[4:]
    names = json.loads(input())
    for name in names:
        if name.endswith('.py'):  # model.py: Triton loads it by path
            spec = importlib.util.spec_from_file_location('model', where + '/' + name)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        else:
            importlib.import_module(name)
    print('RESULT=' + json.dumps({
        'heavy': sorted(m for m in sys.modules if m.split('.')[0] in HEAVY
                        or m.startswith('nvidia.dali')),
        'towhee_rt': [m for m in sys.modules if m.split('.')[0] == 'towhee_rt'],
        'files': {m: getattr(sys.modules[m], '__file__', None) for m in names
                  if not m.endswith('.py')}}))
""").replace("HEAVY", repr(tuple(h for h in _HEAVY if "." not in h)))
#: Triton's Python-backend utilities, only so that model.py imports (not their behaviour:
#: the served adapter is exercised by the integration tests against a real tritonserver).
_TRITON_UTILS_STUB = "class Logger:\n    log_info = log_warn = log_error = print\n"


def _probe(tmp_path, mode, where, names, allowed="", extra_path=()):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    out = subprocess.run([sys.executable, "-I", "-c", _PROBE, mode, str(where), str(allowed),
                          *map(str, extra_path)], input=json.dumps(names), cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{mode}: {out.stderr[-3000:]}"
    return json.loads(out.stdout.rsplit("RESULT=", 1)[1])


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A repository with a built-in operator and a user's function and class."""
    pipe = (towhee.dummy_input().test_text.clean().test_text.hashed_words(dim=8)
            .as_function())
    root = tmp_path_factory.mktemp("shipped") / "repo"
    user = towhee.build_model_repo(pipe, root, model_name="user")
    builtin = towhee.build_model_repo(towhee.dummy_input().image_decode.cv2_rgb().as_function(),
                                      root, model_name="builtin", overwrite=True)
    return {"user": root / user.models[0].model_name / "1",
            "builtin": root / builtin.models[0].model_name / "1"}


def test_operators_import_where_they_land_without_towhee_rt(repo, tmp_path):
    version = repo["builtin"]
    assert not (version / shipped.STAND_IN_PACKAGE).exists()
    names = [f"{shipped.OPS_PACKAGE}.{p.stem}" for p in
             sorted((version / shipped.OPS_PACKAGE).glob("*.py")) if p.stem != "__init__"]
    assert len(names) == len(shipped.OPERATORS.files) - 1
    report = _probe(tmp_path, "operators", version, names)
    assert report["towhee_rt"] == [] and report["heavy"] == []
    assert all(f.startswith(str(version)) for f in report["files"].values())


def test_user_operator_and_stand_in_import_where_they_land(repo, tmp_path):
    version = repo["user"]
    report = _probe(tmp_path, "stand-in", version, ["towhee_rt", "towhee_ops.user_text_ops"],
                    allowed=version)
    assert report["files"]["towhee_rt"] == str(version / "towhee_rt" / "__init__.py")
    assert report["heavy"] == []


def test_adapter_imports_where_it_lands(repo, tmp_path):
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "triton_python_backend_utils.py").write_text(_TRITON_UTILS_STUB)
    report = _probe(tmp_path, "adapter", repo["builtin"], ["model.py"], extra_path=[stub])
    assert report["towhee_rt"] == [] and report["heavy"] == []


def test_supervisor_imports_where_it_lands(tmp_path):
    context = tmp_path / "context"
    package = docker.write_supervisor(context)
    names = [package.name] + [f"{package.name}.{m}" for m in shipped.SUPERVISOR_MODULES]
    report = _probe(tmp_path, "supervisor", context, names)
    assert report["towhee_rt"] == [] and report["heavy"] == []
    assert all(f.startswith(str(package)) for f in report["files"].values())
