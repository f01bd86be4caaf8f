"""The HTTP peers' pure helpers (bench/peer_infinity.py, bench/peer_litserve.py,
bench/http_load.py, bench/curves.py): request bodies, response parsing, cosine, the sweep
points behind the curves. No server is started here; the peers themselves run in
``bash bench/run.sh``."""
import http.server
import json
import threading

import numpy as np
import pytest

from bench import curves, peer_infinity, peer_litserve
from bench.http_load import HttpJsonClient, PeerHttpError, min_cosine
from bench.peer_rows import peer_concurrencies


def test_infinity_request_is_openai_style_and_response_keeps_input_order():
    assert peer_infinity.request_body("hi") == {"model": "minilm", "input": ["hi"]}
    assert peer_infinity.request_body(b"caf\xc3\xa9")["input"] == ["café"]
    body = {"object": "list", "data": [{"embedding": [0.0, 1.0], "index": 1},
                                       {"embedding": [2.0, 3.0], "index": 0}]}
    got = peer_infinity.vectors_from_response(body)
    np.testing.assert_array_equal(np.stack(got), [[2.0, 3.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="one embedding"):
        peer_infinity.vector_from_response(body)
    with pytest.raises(ValueError, match="OpenAI-style"):
        peer_infinity.vectors_from_response({"error": "model not found"})


def test_infinity_variants_ask_for_mean_pooling_on_onnx():
    args = {v.label: v.args() for v in peer_infinity.VARIANTS}
    onnx = [a for label, a in args.items() if "optimum" in label]
    assert onnx and all(a[a.index("--pooling-method") + 1] == "mean" for a in onnx)
    assert all("--onnx-disable-optimize" in a for a in onnx)  # prepare() optimizes
    assert all(a[a.index("--device") + 1] == "cpu" for a in args.values())


@pytest.mark.parametrize("pipeline,item", [("minilm", "a sentence"),
                                           ("resnet50", b"\x89PNG\r\n\x1a\n\x00\xff")])
def test_litserve_request_round_trips(pipeline, item):
    body = json.loads(json.dumps(peer_litserve.request_body(pipeline, item)))
    want = item.encode("utf-8") if isinstance(item, str) else item
    assert peer_litserve.item_from_request(pipeline, body) == want


def test_litserve_rejects_malformed_requests_and_responses():
    with pytest.raises(ValueError, match="'image'"):
        peer_litserve.item_from_request("clip", {"text": "x"})
    with pytest.raises(Exception):
        peer_litserve.item_from_request("clip", {"image": "not base64!"})
    with pytest.raises(ValueError, match="embedding"):
        peer_litserve.vector_from_response({"output": [1.0]})
    np.testing.assert_array_equal(peer_litserve.vector_from_response({"embedding": [1, 2]}),
                                  np.asarray([1, 2], np.float32))


def test_min_cosine():
    a = np.asarray([[1.0, 0.0], [1.0, 1.0]])
    assert min_cosine(a, 3 * a) == pytest.approx(1.0)
    assert min_cosine(a, np.asarray([[0.0, 1.0], [1.0, 1.0]])) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        min_cosine(a, a[:1])


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers {"embedding": [len(text), n]} or a 500 for text 'fail'."""
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, out = (500, b"boom") if body["text"] == "fail" else \
            (200, json.dumps({"embedding": [len(body["text"]), 1.0]}).encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture()
def echo_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()


def test_http_client_keeps_item_order_under_concurrency(echo_url):
    client = peer_litserve.client("minilm", echo_url)
    texts = ["x" * n for n in range(1, 40)]
    vectors, latencies = client.infer(texts, concurrency=8)
    assert [int(v[0]) for v in vectors] == list(range(1, 40))
    assert len(latencies) == len(texts) and all(s > 0 for s in latencies)
    with pytest.raises(PeerHttpError, match="HTTP 500"):
        client.infer(["ok", "fail", "ok"], concurrency=2)
    with pytest.raises(ValueError):
        HttpJsonClient("127.0.0.1:80/x", dict, np.asarray)


def test_peer_sweep_reaches_32_in_full_runs_only():
    assert peer_concurrencies((1, 4, 8, 16), quick=False) == [1, 4, 8, 16, 32]
    assert peer_concurrencies((1, 8), quick=True) == [1, 8]


def test_sweep_points_keep_systems_with_a_curve():
    rows = [{"system": "a", "items_per_s": r, "p50_ms": 1.0, "p99_ms": 2.0,
             "settings": {"concurrency": c}} for c, r in ((8, 20.0), (1, 10.0), (8, 25.0))]
    rows += [{"system": "b", "items_per_s": 5.0, "settings": {"concurrency": 1}},
             {"system": "ceiling", "items_per_s": 50.0, "settings": {"batch_size": 8}}]
    points = curves.sweep_points({"rows": rows})
    assert list(points) == ["a"]
    assert [(p["concurrency"], p["items_per_s"]) for p in points["a"]] == [(1, 10.0), (8, 25.0)]
