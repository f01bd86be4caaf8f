"""What a failed start says (pure log parsing, no server): the failing model and its cause
first, CUDA noise of a machine without a GPU never quoted as a cause, the log's path last; and
the ONNX exporter's output captured rather than printed."""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest

from towhee_rt.triton import server_log

CUDA_NOISE = (
    'W1203 pinned_memory_manager.cc:273] "Unable to allocate pinned system memory, pinned '
    'memory pool will not be available: CUDA driver version is insufficient for CUDA runtime '
    'version"\n'
    'I1203 cuda_memory_manager.cc:117] "CUDA memory pool disabled"\n'
    'E1203 server.cc:241] "CudaDriverHelper has not been initialized."\n'
    'W1203 metrics.cc:1] "unable to get number of CUDA devices"\n')
BROKEN = ('E1203 model_lifecycle.cc:642] "failed to load \'enc\' version 1: Internal: '
          'ValueError: bad weights\\n\\nAt:\\n  /r/enc/1/model.py(3): initialize\\n"\n'
          'I1203 model_lifecycle.cc:777] "failed to load \'enc\'"\n'
          'I1203 server.cc:305] "Waiting for in-flight requests to complete."\n')


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    monkeypatch.setattr(server_log, "gpu_present", lambda: False)


def test_the_failing_model_and_its_cause_come_first_then_the_log_path():
    error = server_log.start_error("tritonserver exited with code 1 before it was ready",
                                   Path("/tmp/x.log"), CUDA_NOISE + BROKEN)
    lines = str(error).splitlines()
    assert lines[0] == ("model 'enc' failed to load: Internal: ValueError: bad weights | At: | "
                        "  /r/enc/1/model.py(3): initialize")
    assert lines[1] == "tritonserver exited with code 1 before it was ready"
    assert lines[-1] == "log: /tmp/x.log"
    assert len(lines) == 3 and "CUDA" not in str(error)
    assert error.failed_models == {"enc": lines[0].split(": ", 1)[1]}


def test_without_a_cause_the_log_is_quoted_without_cuda_noise():
    text = CUDA_NOISE + 'I1203 server.cc:1] "something else went wrong"\n'
    error = server_log.start_error("tritonserver exited with code 1 before it was ready",
                                   Path("/tmp/x.log"), text)
    message = str(error)
    assert "something else went wrong" in message
    assert "CudaDriverHelper" not in message and "number of CUDA devices" not in message
    assert "(4 CUDA line(s) left out" in message and "they are not the cause" in message
    assert message.splitlines()[-1] == "log: /tmp/x.log"


def test_with_a_gpu_cuda_lines_are_quoted(monkeypatch):
    monkeypatch.setattr(server_log, "gpu_present", lambda: True)
    message = str(server_log.start_error("exited", Path("/tmp/x.log"), CUDA_NOISE))
    assert "CudaDriverHelper has not been initialized" in message
    assert "left out" not in message


def test_several_failed_models_are_listed():
    poll = ('E1203 model_repository_manager.cc:1460] "Poll failed for model directory '
            '\'repo_a\': failed to open text file for read /x/repo_a/config.pbtxt: No such '
            'file or directory"\n')
    error = server_log.start_error("exited", None, BROKEN + poll)
    assert str(error).startswith("failed models:\n  enc: Internal: ValueError: bad weights")
    assert "  repo_a: failed to open text file for read /x/repo_a/config.pbtxt" in str(error)


def test_the_onnx_exporters_output_is_captured(capfd):
    from towhee_rt.accel.onnx_export import captured_output

    captured = []
    with captured_output(captured):
        print("Torch IR graph at exception: graph(...)")  # Python's stdout
        sys.stdout.flush()
        ctypes.CDLL(None).write(2, b"from C++\n", 9)  # what torch's C++ code writes
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err and "from C++" not in out + err
    assert "Torch IR graph at exception" in captured[0] and "from C++" in captured[0]
