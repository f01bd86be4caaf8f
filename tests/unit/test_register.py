"""towhee_rt.register: the user's own operators, locally, and what the repository ships of them.

The user modules are real files (tests/user_ops/, or written to tmp_path and imported), as a
user's would be. The served copy is exercised here without tritonserver: the generated
model.py adapter loads in a Python that cannot import towhee_rt (the integration tests serve
the same modules on a real tritonserver).
"""
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

import towhee_rt as towhee
from towhee_rt import ConfigError, Operator, Param, TensorSpec, register
from towhee_rt.errors import BadInputError, ItemError
from towhee_rt.registry import namespaces, operator_class
from towhee_rt.triton import config as triton_config

from ..user_ops import text_ops, tiny_model
from ..user_ops._python import python_without_towhee_rt

REPO = Path(__file__).resolve().parents[2]
TEXT = [TensorSpec("text", "bytes")]


# -- registered operators, locally -------------------------------------------------------------
def test_registered_class_runs_like_a_builtin():
    assert operator_class("test_text.hashed_words") is text_ops.HashedWords
    assert text_ops.HashedWords.name == "test_text.hashed_words"
    assert "hashed_words" in namespaces()["test_text"]
    pipe = towhee.dummy_input().test_text.hashed_words(dim=8).as_function()
    vec = pipe("a b a")
    assert vec.dtype == np.float32 and vec.shape == (8,)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-6
    with pytest.raises(ConfigError, match=r"valid params are: dim \(int, default 32\)"):
        towhee.dummy_input().test_text.hashed_words(dims=8)
    with pytest.raises(ConfigError, match="JSON"):
        towhee.dummy_input().test_text.hashed_words(dim=object())


def test_registered_function_follows_the_contract():
    assert text_ops.clean(b"A  B") == b"a b"  # register returns the function unchanged
    cls = operator_class("test_text.clean")
    assert cls.name == "test_text.clean" and cls.__qualname__ == "clean"
    assert [p.describe() for p in cls.params_spec if not p.internal] == [
        "lower (bool, default True)", "max_words (int, default 64)"]
    pipe = towhee.dummy_input().test_text.clean(lower=False, max_words=2).as_function()
    assert pipe("Hello   big World") == b"Hello big"  # str in -> bytes, as served
    assert pipe(b"x\ty") == b"x y"
    results = pipe(["a", "   ", "b"], errors="return")
    assert results[0] == b"a" and results[2] == b"b"
    assert isinstance(results[1], BadInputError) and "no words" in str(results[1])
    with pytest.raises(ConfigError, match="must be bool"):
        towhee.dummy_input().test_text.clean(lower="yes")


def test_function_with_two_outputs_and_dc():
    length, upper = towhee.dummy_input().test_text.length_and_upper().as_function()("héllo")
    assert int(length) == len("héllo".encode()) and length.dtype == np.int64
    assert upper == "HéLLO".encode()  # str output -> UTF-8 bytes
    assert towhee.dc(["A b"]).test_text.clean().test_text.hashed_words(dim=4).to_list()[0] \
        .shape == (4,)


def test_function_output_that_breaks_the_contract_is_an_internal_error():
    @register("t_reg.wrong_shape", inputs=TEXT,
              outputs=[TensorSpec("v", "float32", (3,))])
    def wrong_shape(text):
        return np.zeros(2)

    result = towhee.dummy_input().t_reg.wrong_shape().as_function()(["x"], errors="return")[0]
    assert isinstance(result, ItemError) and result.kind == "internal"
    assert "must have shape (3,)" in str(result)


def test_keyword_only_param_without_default_is_required():
    @register("t_reg.suffix", inputs=TEXT, outputs=TEXT)
    def suffix(text, *, end):
        return text + end.encode()

    assert towhee.dummy_input().t_reg.suffix(end="!").as_function()("hi") == b"hi!"
    with pytest.raises(ConfigError, match="'end' is required"):
        towhee.dummy_input().t_reg.suffix()


# -- what register refuses ------------------------------------------------------------------------
def test_taken_names_are_refused():
    class Upper(Operator):
        inputs, outputs = TEXT, TEXT

        def process_batch(self, batch):
            return {"text": batch["text"]}

    with pytest.raises(ConfigError, match="'image_decode.cv2_rgb' is a built-in operator"):
        register("image_decode.cv2_rgb")(Upper)
    register("t_reg.upper")(Upper)
    register("t_reg.upper")(Upper)  # the same class again (a reload): allowed

    class Other(Upper):
        pass

    with pytest.raises(ConfigError, match=r"already registered by .*Upper; choose another name"):
        register("t_reg.upper")(Other)
    with pytest.raises(ConfigError, match="already registered"):
        register("test_text.clean", inputs=TEXT, outputs=TEXT)(lambda text: text)


@pytest.mark.parametrize("name", ["upper", "a.b.c", "1x.y", "_x.y", "x._y", "x-y.z", None])
def test_malformed_names_are_refused(name):
    with pytest.raises(ConfigError, match="must be 'namespace.operator'"):
        register(name)


@pytest.mark.parametrize("namespace", ["remote", "to_list", "pipeline_config", "as_function"])
def test_namespace_that_is_a_pipeline_method_is_refused(namespace):
    with pytest.raises(ConfigError, match="is the name of a pipeline method"):
        register(f"{namespace}.op")


def test_reserved_namespaces_are_the_pipeline_methods():
    from towhee_rt.datacollection import DataCollection
    from towhee_rt.pipeline import PipelineBuilder
    from towhee_rt.registry import BUILDER_ATTRIBUTES

    public = {a for cls in (PipelineBuilder, DataCollection) for a in dir(cls)
              if not a.startswith("_")}
    assert BUILDER_ATTRIBUTES == public, (
        "towhee_rt.registry.BUILDER_ATTRIBUTES must list the public attributes of "
        "PipelineBuilder and DataCollection (a namespace of the same name would be shadowed)")


def test_undeclared_param_says_how_to_declare_it():
    @register("t_reg.scaled")
    class Scaled(Operator):
        inputs, outputs = TEXT, TEXT

        def process_batch(self, batch):
            return {"text": [t * self.params["factor"] for t in batch["text"]]}

    @register("t_reg.scaled_more")
    class ScaledMore(Scaled):
        params_spec = Operator.params_spec + (Param("times", (int,), 1),)

    @register("t_reg.lowered", inputs=TEXT, outputs=TEXT)
    def lowered(text, *, strip=True):
        return text.lower()

    ns = towhee.dummy_input().t_reg
    with pytest.raises(ConfigError, match=re.escape(
            "t_reg.scaled: unknown param(s) 'factor'; valid params are: none; to give "
            "t_reg.scaled a param, declare it in the class "
            "test_undeclared_param_says_how_to_declare_it.<locals>.Scaled: params_spec = "
            "Operator.params_spec + (Param('factor', (int, float), 2.0, 'what it does'),)")):
        ns.scaled(factor=2.0)
    with pytest.raises(ConfigError, match=re.escape(
            "add Param('factor', (int,), 2, 'what it does') to the params_spec tuple")):
        ns.scaled_more(factor=2)
    with pytest.raises(ConfigError, match=re.escape(
            "to give t_reg.lowered a param, add it to the function lowered() as a keyword-only "
            "argument with a default: def lowered(text, *, locale='C')")):
        ns.lowered(locale="C")
    with pytest.raises(ConfigError) as refused:  # a built-in operator: nothing to declare
        towhee.dummy_input().image_decode.cv2_rgb(factor=2)
    assert "valid params are: max_pixels" in str(refused.value)
    assert "params_spec" not in str(refused.value)


def _op(**attributes):
    def process_batch(self, batch):
        return batch

    return type("Op", (Operator,), {"process_batch": process_batch, **attributes})


@pytest.mark.parametrize("attributes, message", [
    ({"outputs": TEXT}, "declares no inputs; declare them on the class"),
    ({"inputs": TEXT}, "declares no outputs; declare them on the class"),
    ({"inputs": ["text"], "outputs": TEXT}, r"must be a list of towhee_rt.TensorSpec, got "
                                            r"\['text'\]; declare them on the class"),
    ({"inputs": TEXT, "outputs": TEXT, "params_spec": Operator.params_spec + (
        Param("when", (str,), object()),)}, "the default of param 'when' .* is not JSON"),
    ({"inputs": TEXT, "outputs": TEXT, "params_spec": Operator.params_spec + (
        Param("model", (np.ndarray,), None),)}, "param 'model' takes ndarray, which is not JSON"),
    ({"inputs": TEXT, "outputs": TEXT, "name": "x.other"}, "declares name = 'x.other'"),
])
def test_class_declarations_are_checked(attributes, message):
    with pytest.raises(ConfigError, match=message):
        register("t_reg.checked")(_op(**attributes))
    assert "checked" not in namespaces().get("t_reg", [])


def test_not_an_operator_is_refused():
    class Plain:
        pass

    with pytest.raises(ConfigError, match="is not an operator; subclass towhee_rt.Operator"):
        register("t_reg.plain")(Plain)
    with pytest.raises(ConfigError, match="does not implement process_batch"):
        register("t_reg.lazy")(type("Lazy", (Operator,), {"inputs": TEXT, "outputs": TEXT}))
    with pytest.raises(ConfigError, match="inputs= and outputs= are for registering a function"):
        register("t_reg.both", inputs=TEXT, outputs=TEXT)(_op(inputs=TEXT, outputs=TEXT))


def test_function_signatures_are_checked():
    with pytest.raises(ConfigError, match="declares no inputs; pass them to register"):
        register("t_reg.f1", outputs=TEXT)(lambda text: text)
    with pytest.raises(ConfigError, match=r"takes 2 positional argument\(s\) but the operator "
                                          r"declares 1 input\(s\) \(text\)"):
        register("t_reg.f2", inputs=TEXT, outputs=TEXT)(lambda text, other: text)
    with pytest.raises(ConfigError, match=r"takes \*args"):
        register("t_reg.f3", inputs=TEXT, outputs=TEXT)(lambda *args: args[0])

    def bad_default(text, *, where=Path(".")):
        return text

    with pytest.raises(ConfigError, match="the default of param 'where' is PosixPath, not JSON"):
        register("t_reg.f4", inputs=TEXT, outputs=TEXT)(bad_default)


# -- shipping into a repository ---------------------------------------------------------------
def test_repository_ships_the_user_module_and_the_stand_in(tmp_path):
    pipe = towhee.dummy_input().test_text.clean().test_text.hashed_words(dim=8).as_function()
    repo = towhee.build_model_repo(pipe, tmp_path / "repo")
    for model, name in zip(repo.models, ["clean", "HashedWords"]):
        version = repo.path / model.model_name / "1"
        shipped = version / "towhee_ops" / "user_text_ops.py"
        assert shipped.read_text() == Path(text_ops.__file__).read_text()
        assert (version / "towhee_rt" / "__init__.py").is_file()
        assert sorted(p.name for p in (version / "towhee_rt").iterdir()) == ["__init__.py"]
        assert (version / "towhee_ops" / "function_operator.py").read_text() == \
            (REPO / "backends" / "function_operator.py").read_text()
        config = triton_config.parse_pbtxt((version.parent / "config.pbtxt").read_text())
        operator = json.loads(triton_config.read_parameters(config)["towhee_operator"])
        assert operator == {"name": model.operator, "module": "user_text_ops", "class": name}
    assert not list(repo.path.rglob("*.pkl")) and not list(repo.path.rglob("*.pickle"))


def test_builtin_models_get_no_stand_in(tmp_path):
    repo = towhee.build_model_repo(towhee.dummy_input().image_decode.cv2_rgb().as_function(),
                                   tmp_path / "repo")
    version = repo.path / repo.models[0].model_name / "1"
    assert not (version / "towhee_rt").exists()
    assert not list((version / "towhee_ops").glob("user_*"))


def _import_file(tmp_path, monkeypatch, name, source, files=None):
    """Write module ``name`` (and ``files``) under tmp_path and import it, as a user would."""
    for relative, text in {**(files or {}), name.replace(".", "/") + ".py": source}.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return __import__(name, fromlist=["_"])


OPS_TEMPLATE = textwrap.dedent("""\
    {imports}
    from towhee_rt import TensorSpec, register


    @register('{name}', inputs=[TensorSpec('text', 'bytes')],
              outputs=[TensorSpec('text', 'bytes')])
    def shout(text):
        return {body}
""")


@pytest.mark.parametrize("case, files, imports, message", [
    ("local", {"reg_helpers.py": "def shout(t):\n    return t.upper()\n"},
     "import reg_helpers", r"imports the local module 'reg_helpers' \(.*reg_helpers.py\), not an "
                           r"installed package \(line 1\). A served model holds only that one "
                           r"file: move what the operator needs into it"),
    ("relative", {"reg_pkg/__init__.py": "", "reg_pkg/helpers.py": "X = 1\n"},
     "from . import helpers", r"uses a relative import \(line 1: from . import helpers\)"),
    ("pipeline", {}, "from towhee_rt import dummy_input",
     "imports dummy_input from towhee_rt, which a served model does not have"),
    ("internal", {}, "import towhee_rt.pipeline",
     "imports towhee_rt.pipeline, which a served model does not have: import only .*Operator"
     r".* from towhee_rt \(or towhee_rt.operator\)"),
])
def test_modules_that_cannot_be_shipped_are_refused(tmp_path, monkeypatch, case, files, imports,
                                                     message):
    name = f"reg_pkg.ops_{case}" if case == "relative" else f"reg_ops_{case}"
    module = _import_file(tmp_path, monkeypatch, name, OPS_TEMPLATE.format(
        imports=imports, name=f"t_ship.{case}", body="text.upper()"), files)
    pipe = getattr(towhee.dummy_input().t_ship, case)().as_function()
    assert pipe("a") == b"A"  # runs locally all the same
    with pytest.raises(ConfigError, match=message):
        towhee.build_model_repo(pipe, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()  # refused before anything is built or written
    assert module.shout(b"x") == b"X"


def test_module_importing_only_installed_and_stdlib_packages_ships(tmp_path, monkeypatch,
                                                                   no_towhee_rt_python):
    _import_file(tmp_path, monkeypatch, "reg_ops_fine", OPS_TEMPLATE.format(
        imports="import json, os.path\nimport numpy as np\nimport towhee_rt\n"
                "from towhee_rt.operator import Param"
                "\nfrom towhee_rt.backends.operator_base import OperatorInputError\ntry:\n"
                "    import not_installed_anywhere\nexcept ImportError:\n    pass",
        name="t_ship.fine", body="text.upper() + str(isinstance(OperatorInputError('x'), "
                                 "towhee_rt.OperatorInputError)).encode()"))
    pipe = towhee.dummy_input().t_ship.fine().as_function()
    assert pipe("a") == b"ATrue"
    repo = towhee.build_model_repo(pipe, tmp_path / "repo")
    assert (repo.path / repo.models[0].model_name / "1/towhee_ops/user_reg_ops_fine.py").is_file()
    # Served, towhee_rt.operator and towhee_rt.backends are the stand-in's: one set of classes.
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    assert _run_served_copy(no_towhee_rt_python, repo, repo.models[0], ["a"], cwd) == ["ATrue"]


def test_operator_defined_in_main_is_refused_with_what_to_do(tmp_path):
    script = textwrap.dedent("""
        import towhee_rt as towhee
        from towhee_rt import TensorSpec, register

        @register('t_main.shout', inputs=[TensorSpec('text', 'bytes')],
                  outputs=[TensorSpec('text', 'bytes')])
        def shout(text):
            return text.upper()

        pipe = towhee.dummy_input().t_main.shout().as_function()
        print(pipe('hi'))
        try:
            towhee.build_model_repo(pipe, 'repo')
        except towhee.ConfigError as exc:
            print('refused:', exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "b'HI'" in out.stdout
    assert ("refused: operator 't_main.shout' (shout) is defined in __main__ (your script, a "
            "notebook cell or an interactive session), whose source cannot be shipped into a "
            "model repository: move the operator to its own module file next to your script "
            "(e.g. my_ops.py), import it from there") in out.stdout
    assert not (tmp_path / "repo").exists()


def test_operator_not_at_module_level_is_refused(tmp_path):
    @register("t_reg.nested", inputs=TEXT, outputs=TEXT)
    def nested(text):
        return text

    pipe = towhee.dummy_input().t_reg.nested().as_function()
    with pytest.raises(ConfigError, match="is defined inside .*<locals>; .* define it at the "
                                          "top level of the module"):
        towhee.build_model_repo(pipe, tmp_path / "repo")


# -- the served copy, without tritonserver or towhee_rt ----------------------------------------
ADAPTER = textwrap.dedent("""
    import json, sys, types
    # model.py as the Python backend loads it, with a stand-in for Triton's utilities
    sys.modules['triton_python_backend_utils'] = types.SimpleNamespace(Logger=types.SimpleNamespace(
        log_info=print, log_warn=print, log_error=print))
    import importlib.util
    spec = importlib.util.spec_from_file_location('model', sys.argv[1] + '/model.py')
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    adapter = model.TritonPythonModel()
    adapter.initialize({'model_config': sys.argv[2], 'model_instance_name': 'test'})
    from towhee_ops.batching import process_items
    import numpy as np, towhee_rt
    items = json.loads(sys.argv[3])
    items = [(i.encode(),) if isinstance(i, str) else (np.asarray(i, np.float32),) for i in items]
    results = [r if isinstance(r, Exception) else r[0] for r in process_items(adapter.op, items)]
    print('RESULT=' + json.dumps({'towhee_rt': towhee_rt.__file__, 'results': [
        repr(r) if isinstance(r, Exception) else r.decode() if isinstance(r, bytes) else r.tolist()
        for r in results]}))
""")


@pytest.fixture(scope="module")
def no_towhee_rt_python(tmp_path_factory):
    return python_without_towhee_rt(tmp_path_factory.mktemp("venv") / "venv") / "python"


def _run_served_copy(python, repo, model, items, cwd):
    version = repo.path / model.model_name / "1"
    config = triton_config.parse_pbtxt((version.parent / "config.pbtxt").read_text())
    config_json = json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True))
    out = subprocess.run([str(python), "-c", ADAPTER, str(version), config_json,
                          json.dumps(items)], cwd=cwd, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    report = json.loads(re.search(r"^RESULT=(.*)$", out.stdout, re.M).group(1))
    assert report["towhee_rt"] == str(version / "towhee_rt" / "__init__.py")
    return report["results"]


def test_served_copy_runs_in_a_python_without_towhee_rt(tmp_path, no_towhee_rt_python):
    texts = ["Hello   World", " ", "a b c d"]
    steps = towhee.dummy_input().test_text.clean(max_words=3)
    pipe = steps.test_text.hashed_words(dim=8).as_function()
    repo = towhee.build_model_repo(pipe, tmp_path / "repo")
    clean_local = steps.as_function()(texts, errors="return")
    clean_served = _run_served_copy(no_towhee_rt_python, repo, repo.models[0], texts, tmp_path)
    assert clean_served[0] == clean_local[0].decode() and clean_served[2] == "a b c"
    assert "OperatorInputError('no words" in clean_served[1]  # the stand-in's class: bad input
    vectors = _run_served_copy(no_towhee_rt_python, repo, repo.models[1], ["hello world"],
                               tmp_path)
    assert np.array_equal(np.float32(vectors[0]), pipe("hello world"))


def test_served_copy_of_a_user_model_operator_runs_onnx(tmp_path, no_towhee_rt_python):
    pipe = (towhee.dummy_input().pipeline_config(format_priority=["onnx"])
            .test_model.tiny_linear().as_function())
    assert pipe.formats() == {"0:test_model.tiny_linear": "onnx"}
    repo = towhee.build_model_repo(pipe, tmp_path / "repo")
    items = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    served = _run_served_copy(no_towhee_rt_python, repo, repo.models[0], items.tolist(),
                              tmp_path)
    local = pipe(list(items))
    assert isinstance(operator_class("test_model.tiny_linear")(), tiny_model.TinyLinear)
    assert np.allclose(np.float32(served), np.stack(local), rtol=0, atol=1e-6)


# -- the docs example --------------------------------------------------------------------------
def test_docs_show_examples_my_ops_as_it_is():
    page = (REPO / "docs" / "operators.md").read_text()
    section = page.split("## Your own operators", 1)[1]
    shown = re.search(r"```python file=my_ops.py\n(.*?)```", section, re.S).group(1)
    assert shown == (REPO / "examples" / "my_ops.py").read_text()
