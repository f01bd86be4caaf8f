"""An unreachable hub fails a build in seconds (issue 20), not after a minute of retries.

The hub is simulated by a closed loopback port as ``HF_ENDPOINT`` (no network is reached), with
``HF_HUB_OFFLINE`` unset, in a subprocess (huggingface_hub reads both when it is imported)."""
import socket

from ..hub_cache import run_offline

#: Before the probe, each pretrained load spent ~50 s in huggingface_hub's retries.
FAST_S = 8.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_hub_loads_the_cache_and_fails_the_rest_in_seconds(hub_cache, tmp_path):
    """timm and sentence-transformers models in the cache load; Towhee's default CLIP (not in
    it) fails at once, naming HF_HUB_OFFLINE=1 and checkpoint_path= as the ways out."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    result = run_offline(["tests.pretrained_cases", "errors", "timm", "st"], hub_cache[0],
                         tmp_path / "cache", timeout=300,
                         extra={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint})
    for case in ("timm", "st"):
        assert result[case]["error"] is None, (case, result[case])
    outcome = result["clip_default"]
    assert outcome["error"] and outcome["type"] == "ConfigError", outcome
    assert outcome["seconds"] < FAST_S, outcome["seconds"]
    message = outcome["error"]
    assert f"the hub {endpoint} could not be reached (no connection within" in message, message
    assert "HF_HUB_OFFLINE=1" in message and "checkpoint_path=" in message, message
    assert str(hub_cache[0]) in message, message


def test_the_probe_is_skipped_offline_and_answers_from_its_memo(monkeypatch):
    from towhee_rt.backends import weights

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(weights, "hub_endpoint", lambda: endpoint)
    monkeypatch.setattr(weights, "_PROBES", {})
    assert weights.hub_reachable(timeout=1.0) is False and weights.hub_probe_failed()
    with socket.socket() as server:   # now listening: the memo still answers for a minute
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert weights.hub_reachable() is False
        monkeypatch.setattr(weights, "hub_endpoint", lambda: f"http://127.0.0.1:{port}")
        assert weights.hub_reachable(timeout=1.0) is True and not weights.hub_probe_failed()
