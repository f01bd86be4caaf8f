"""A minimal, hand-written Python-backend model repository for the server tests.

* ``echo``: FP32 ``INPUT0`` [-1] -> ``OUTPUT0`` = 2 * input (batching on, max 8);
* ``broken`` (only when asked): ``initialize`` raises, so the server cannot start;
* ``slow`` (only when asked): ``initialize`` sleeps 60 s, to exercise the ready timeout;
* ``probe`` (only when asked): reports, as a JSON string, how the Python backend imported its
  ``model.py``: ``__name__``, ``sys.path`` and whether sibling / relative imports worked;
* ``echo2`` (only when asked): ``echo`` with two instances;
* ``dies`` (only when asked): its stub exits (code 3) in ``execute``, on every request;
* ``nap`` (only when asked): ``echo`` that first sleeps ``INPUT0[0, 0]`` seconds.

Configs are plain pbtxt text here on purpose: the tests exercise the launcher, not the config
generator (production configs go through Triton's protobuf in towhee_rt.triton.config).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

_IO_CONFIG = """backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: {out_type} dims: [ {out_dims} ] }} ]
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
"""

ECHO_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * 2)]))
        return responses
'''

BROKEN_MODEL = '''
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("broken on purpose")

    def execute(self, requests):
        return []
'''

SLOW_MODEL = '''
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(60)

    def execute(self, requests):
        return []
'''

DIES_MODEL = '''
import os


class TritonPythonModel:
    def execute(self, requests):
        os._exit(3)
'''

NAP_MODEL = '''
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            time.sleep(float(x.flat[0]))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * 2)]))
        return responses
'''

PROBE_MODEL = '''
import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

REPORT = {"name": __name__, "package": __package__, "sys_path": list(sys.path)}
try:
    import helper
    REPORT["sibling_import"] = helper.VALUE
except Exception as exc:
    REPORT["sibling_import"] = repr(exc)
try:
    from .ops import INNER
    REPORT["relative_import"] = INNER
except Exception as exc:
    REPORT["relative_import"] = repr(exc)


class TritonPythonModel:
    def execute(self, requests):
        text = json.dumps(REPORT).encode()
        out = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy().shape[0]
            data = np.array([[text]] * n, dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return out
'''


def _write_model(repo: Path, name: str, source: str, out_type: str = "TYPE_FP32",
                 out_dims: str = "-1", count: int = 1) -> Path:
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(_IO_CONFIG.format(out_type=out_type,
                                                                out_dims=out_dims, count=count))
    (version / "model.py").write_text(source)
    return version


def write_tiny_repo(path: Path, models: Iterable[str] = ("echo",)) -> Path:
    """Write the requested models (``echo``, ``broken``, ``slow``, ``probe``, ``echo2``,
    ``dies``, ``nap``) under ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in models:
        if name == "echo":
            _write_model(path, "echo", ECHO_MODEL)
        elif name == "broken":
            _write_model(path, "broken", BROKEN_MODEL)
        elif name == "slow":
            _write_model(path, "slow", SLOW_MODEL)
        elif name == "echo2":
            _write_model(path, "echo2", ECHO_MODEL, count=2)
        elif name == "dies":
            _write_model(path, "dies", DIES_MODEL)
        elif name == "nap":
            _write_model(path, "nap", NAP_MODEL)
        elif name == "probe":
            version = _write_model(path, "probe", PROBE_MODEL, "TYPE_STRING", "1")
            (version / "helper.py").write_text("VALUE = 42\n")
            (version / "ops").mkdir(exist_ok=True)
            (version / "ops" / "__init__.py").write_text("from .inner import INNER\n")
            (version / "ops" / "inner.py").write_text("INNER = 'inner'\n")
        else:
            raise ValueError(f"unknown tiny model {name!r}; use echo, broken, slow, probe, "
                             "echo2, dies or nap")
    return path
