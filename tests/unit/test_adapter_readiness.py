"""The served adapter's ``is_ready()`` (what Triton 26.03+ asks for a model's readiness; 2.51
never calls it), run where it lands: in a model's version directory, without towhee_rt."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import towhee_rt as towhee

#: Triton's Python-backend utilities, only so that model.py imports.
_TRITON_UTILS_STUB = "class Logger:\n    log_info = log_warn = log_error = print\n"

_CHECK = textwrap.dedent("""
    import importlib.util, sys
    version, stub = sys.argv[1], sys.argv[2]
    sys.path[:0] = [stub, version]
    spec = importlib.util.spec_from_file_location("model", version + "/model.py")
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    from towhee_ops.image_decode import CV2RGBDecode
    adapter = model.TritonPythonModel()
    adapter.op = None
    states = [adapter.is_ready()]                   # not initialised
    adapter.op = CV2RGBDecode()
    states.append(adapter.is_ready())               # not set up yet
    adapter.op.ensure_setup("cpu")
    states.append(adapter.is_ready())               # serving
    def broken():
        raise RuntimeError("lost the device")
    adapter.op.is_ready = broken
    states.append(adapter.is_ready())               # a failing check: not ready, no raise
    adapter.finalize()
    states.append(adapter.is_ready())               # unloaded
    assert "towhee_rt" not in sys.modules
    print("STATES", states)
""")


def test_adapter_is_ready_follows_the_operator(tmp_path):
    pipe = towhee.dummy_input().image_decode.cv2_rgb().as_function()
    repo = towhee.build_model_repo(pipe, tmp_path / "repo")
    version = repo.path / repo.models[0].model_name / "1"
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "triton_python_backend_utils.py").write_text(_TRITON_UTILS_STUB)
    out = subprocess.run([sys.executable, "-I", "-c", _CHECK, str(version), str(stub)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "STATES [False, False, True, False, False]" in out.stdout, out.stdout
