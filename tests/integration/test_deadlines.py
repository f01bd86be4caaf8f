"""A request's deadline travels through the steps of a served pipeline (real tritonserver on
loopback, always stopped).

The pipeline chains three ``test_slow.pause`` steps (tests/user_ops/slow_ops.py): 0.25 s, 0.6 s
and none; the last one counts the items it computes in a file. A request with a 0.5 s budget is
still in time when the second step could start it (which drops it all the same once it knows
it takes longer than the 0.25 s left) and out of time when the third one could: Triton
alone hands each step the whole 0.5 s again (each queue counts it from its own start), so the
third step would compute it for a caller that gave up long before. The controls: the same
request without a budget (curl, KServe clients, older clients) and with an ample one are
computed by every step. (Triton's per-model statistics count a request a Python model answered
with an error as a success, so the count comes from the operator itself; the ensemble's own
statistics do count it as failed.)
"""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

import towhee_rt as towhee
from towhee_rt.errors import DeadlineExceededError
from towhee_rt.triton.flags import key_headers

from ..user_ops import slow_ops  # noqa: F401 - registers test_slow.pause
from ._served import serve_pipelines

pytestmark = pytest.mark.integration

FIRST_S, SECOND_S, BUDGET_S = 0.25, 0.6, 0.5
X = np.array([1.5, -2.0], dtype=np.float32)


class Tally:
    """The items the last step computed, as its operator counted them (a line each)."""

    def __init__(self, path: Path):
        self.path = path
        path.write_text("")

    def count(self) -> int:
        return len(self.path.read_text().splitlines())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("deadlines")
    tally = Tally(root / "tally.txt")
    pipe = (towhee.dummy_input().test_slow.pause(seconds=FIRST_S)
            .test_slow.pause(seconds=SECOND_S)
            .test_slow.pause(seconds=0.0, tally=str(tally.path)).as_function())
    with serve_pipelines({"slow": pipe}, root / "repo") as server:
        yield server, tally


def _ensemble_stats(server) -> Dict[str, int]:
    """Triton's counts for the ensemble: requests answered with results, and failed."""
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/slow/stats",
                                     headers=key_headers("http", admin_key=server.admin_key))
    with urllib.request.urlopen(request, timeout=10) as response:
        stats = json.load(response)["model_stats"][0]["inference_stats"]
    return {"success": stats["success"]["count"], "fail": stats["fail"]["count"]}


def _settled(server, before: Dict[str, int], limit_s: float = 20.0) -> Dict[str, int]:
    """The change of the ensemble's counts since ``before``, once one request has finished
    there (the client may have stopped waiting long before)."""
    stop = time.monotonic() + limit_s
    while True:
        now = _ensemble_stats(server)
        change = {k: now[k] - before[k] for k in now}
        if sum(change.values()) >= 1 or time.monotonic() > stop:
            return change
        time.sleep(0.05)


def _failed(change: Dict[str, int]) -> bool:
    """Whether the ensemble's counts changed by a failure and no success (Triton 2.51 counts an
    ensemble request failed at a step more than once)."""
    return change["success"] == 0 and change["fail"] >= 1


def _infer(server, **options):
    """One request straight through tritonclient (what curl or a KServe client would send)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensor = grpcclient.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(X[None])
        return client.infer("slow", [tensor], **options).as_numpy("x_output")
    finally:
        client.close()


def test_a_step_does_not_compute_a_request_whose_time_ran_out(served):
    """The caller waits (no cancellation): only the deadline can stop the last step."""
    server, tally = served
    before, computed = _ensemble_stats(server), tally.count()
    with pytest.raises(InferenceServerException) as caught:
        _infer(server, timeout=int(BUDGET_S * 1e6), client_timeout=10.0)
    message = str(caught.value)
    assert "operator test_slow.pause: deadline exceeded" in message, message
    assert "Request timeout expired" in message  # Triton's words: clients treat both alike
    assert _failed(_settled(server, before))
    assert tally.count() == computed


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_client_that_gave_up_costs_the_last_step_nothing(served, protocol):
    """towhee_rt's client sends its budget. Over gRPC, giving up also cancels the request, and
    Triton cancels the steps not yet scheduled; over HTTP only the deadline stops them. Once the
    middle step knows it takes 0.6 s, it drops the request as soon as it has less time than
    that: the client hears "deadline exceeded" before its own deadline and does not send it
    again (no replica could finish it in time)."""
    server, tally = served
    before, computed = _ensemble_stats(server), tally.count()
    url = server.grpc_url if protocol == "grpc" else server.http_url
    got = towhee.dc([X]).remote(url=url, model_name="slow", timeout=BUDGET_S, protocol=protocol,
                                errors="return")
    assert isinstance(got[0], DeadlineExceededError), got
    assert _failed(_settled(server, before))
    time.sleep(0.5)  # the last step has had its chance to compute it
    assert tally.count() == computed


def test_requests_without_a_budget_or_with_enough_are_computed(served):
    server, tally = served
    before, computed = _ensemble_stats(server), tally.count()
    np.testing.assert_array_equal(_infer(server), X[None])  # no timeout at all
    assert _settled(server, before) == {"success": 1, "fail": 0}
    assert tally.count() == computed + 1
    before = _ensemble_stats(server)
    got = towhee.dc([X]).remote(url=server.grpc_url, model_name="slow", timeout=10.0)
    np.testing.assert_array_equal(got[0], X)
    assert _settled(server, before) == {"success": 1, "fail": 0}
    assert tally.count() == computed + 2
