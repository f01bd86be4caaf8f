"""Served output equals local output, for every README pipeline, over gRPC and HTTP.

One real tritonserver serves one repository holding the README pipelines (image decode + timm,
CLIP image, CLIP text, MiniLM), timm in ONNX, and timm and MiniLM in int8, with dynamic batching
and two instances of the model operators.
"""
import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.errors import ItemError, PipelineError

from ..conftest import BAD_FILES, CALIBRATION_SENTENCES, GOOD_SHAPES

pytestmark = pytest.mark.integration

MAX_RELATIVE_ERROR = 1e-5
SENTENCES = ["Triton serves embeddings.", "a photo of a cat", "", "naïve café, 東京",
             "word " * 300]
MODEL_OPS = {"dynamic_batching": {"max_batch_size": 8, "max_queue_delay_microseconds": 1000},
             "instance_count": 2}


def _pipelines():
    image = (towhee.dummy_input().image_decode.cv2_rgb(op_config={"instance_count": 2})
             .image_embedding.timm(model_name="test_resnet", pretrained=False,
                                   op_config=MODEL_OPS).as_function())
    clip_image = (towhee.dummy_input().image_decode.cv2_rgb()
                  .image_text_embedding.clip_image(model_name="clip_vit_base_patch32",
                                                   pretrained=False,
                                                   op_config=MODEL_OPS).as_function())
    clip_text = (towhee.dummy_input()
                 .image_text_embedding.clip_text(model_name="clip_vit_base_patch32",
                                                 pretrained=False,
                                                 op_config={"dynamic_batching": True})
                 .as_function())
    minilm = (towhee.dummy_input()
              .text_embedding.sentence_transformers(op_config=MODEL_OPS).as_function())
    image_onnx = (towhee.dummy_input().pipeline_config(format_priority=["tensorrt", "onnx"])
                  .image_decode.cv2_rgb()
                  .image_embedding.timm(model_name="test_resnet", pretrained=False,
                                        op_config=MODEL_OPS)
                  .as_function())
    return {"image": image, "clip_image": clip_image, "clip_text": clip_text, "minilm": minilm,
            "image_onnx": image_onnx}


def _int8_pipelines(good_dir):
    images = [str(good_dir / n) for n in GOOD_SHAPES]
    image_int8 = (towhee.dummy_input()
                  .pipeline_config(format_priority=["onnx_int8"], calibration_data=images)
                  .image_decode.cv2_rgb(min_side=256)
                  .image_embedding.timm(model_name="test_resnet", pretrained=False,
                                        op_config=MODEL_OPS)
                  .as_function())
    minilm_int8 = (towhee.dummy_input()
                   .pipeline_config(format_priority=["onnx_int8"],
                                    calibration_data=CALIBRATION_SENTENCES)
                   .text_embedding.sentence_transformers(op_config=MODEL_OPS).as_function())
    return {"image_int8": image_int8, "minilm_int8": minilm_int8}


@pytest.fixture(scope="module")
def served(tmp_path_factory, good_dir):
    pipes = {**_pipelines(), **_int8_pipelines(good_dir)}
    repo_dir = tmp_path_factory.mktemp("repo")
    for name, pipe in pipes.items():
        towhee.build_model_repo(pipe, repo_dir, model_name=name, overwrite=True)
    images = [str(good_dir / n) for n in GOOD_SHAPES]
    local = {name: pipe(SENTENCES if "text" in name or "minilm" in name else images)
             for name, pipe in pipes.items()}
    with towhee.serve(repo_dir, grpc_port=0, http_port=0, metrics_port=0) as server:
        yield server, local, images


def _assert_close(served, local):
    assert len(served) == len(local)
    for got, want in zip(served, local):
        assert got.dtype == np.float32 and got.shape == want.shape
        scale = float(np.max(np.abs(want))) or 1.0
        assert float(np.max(np.abs(got - want))) / scale <= MAX_RELATIVE_ERROR


@pytest.mark.parametrize("name", ["image", "clip_image", "clip_text", "minilm"])
@pytest.mark.parametrize("protocol, mode", [("grpc", "infer"), ("http", "async_infer"),
                                            ("grpc", "async_infer")])
def test_served_equals_local(served, name, protocol, mode):
    server, local, images = served
    items = SENTENCES if name in ("clip_text", "minilm") else images
    url = server.grpc_url if protocol == "grpc" else server.http_url
    results = towhee.dc(items).remote(url=url, mode=mode, protocol=protocol, model_name=name,
                                      concurrency=4)
    _assert_close(results, local[name])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_text_batches_of_several_items_per_request(served, protocol):
    server, local, _ = served
    url = server.grpc_url if protocol == "grpc" else server.http_url
    results = towhee.dc(SENTENCES).remote(url=url, protocol=protocol, model_name="minilm",
                                          batch_size=2, mode="async_infer")
    _assert_close(results, local["minilm"])


def test_stream_yields_every_index_once(served):
    server, local, images = served
    client = towhee.Client(server.grpc_url, model_name="image")
    seen = dict(client.stream(images, concurrency=4, close=True))
    assert sorted(seen) == list(range(len(images)))
    _assert_close([seen[i] for i in range(len(images))], local["image"])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_images_get_named_errors_and_good_ones_survive(served, bad_dir, protocol):
    server, local, images = served
    items = [images[0]] + [str(bad_dir / b) for b in BAD_FILES] + [images[1]]
    url = server.grpc_url if protocol == "grpc" else server.http_url
    results = towhee.dc(items).remote(url=url, protocol=protocol, model_name="image",
                                      mode="async_infer", errors="return", batch_size=3)
    _assert_close([results[0], results[-1]], local["image"][:2])
    for index, name in enumerate(BAD_FILES, start=1):
        error = results[index]
        assert isinstance(error, ItemError), (name, error)
        assert (error.index, error.operator) == (index, "image_decode.cv2_rgb")
        assert error.source == str(bad_dir / name)  # the local file, not "<encoded image ...>"
        # The same spelling as a local run of the same item.
        assert str(error) == str(towhee.dummy_input().image_decode.cv2_rgb().as_function()(
            [str(bad_dir / name)] * (index + 1), errors="return")[index])
        kind = "limit" if name.startswith("bomb") else "bad_input"
        assert error.kind == kind and isinstance(error, towhee.BadInputError)
    with pytest.raises(PipelineError, match="empty.jpg"):
        towhee.dc(items).remote(url=url, protocol=protocol, model_name="image")
    assert server.models_ready()


def test_failed_items_are_not_sent_again_but_their_neighbours_are(served, bad_dir):
    server, local, images = served
    records = []
    client = towhee.Client(server.grpc_url, model_name="image", on_request=records.append)
    same_size = [list(GOOD_SHAPES).index(n) for n in ("astronaut.jpg", "coffee.jpg")]
    with client:
        results = client.infer([images[same_size[0]], str(bad_dir / "empty.jpg"),
                                images[same_size[1]]], batch_size=3, errors="return")
    _assert_close([results[0], results[2]], [local["image"][i] for i in same_size])
    assert isinstance(results[1], towhee.BadInputError) and results[1].index == 1
    # The request of 3 failed on item 1 only: items 0 and 2 went again, together.
    # (Their sizes differ: they travel padded between the steps.)
    assert [(r.items, r.error is None) for r in records] == [(3, False), (2, True)]
    assert all(r.seconds > 0 for r in records)


@pytest.mark.parametrize("name", ["image", "clip_image"])
def test_a_request_of_images_of_different_sizes_works(served, name):
    server, local, images = served
    records = []
    client = towhee.Client(server.grpc_url, model_name=name, on_request=records.append)
    with client:  # every image of the test set in requests of 4: sizes differ within each
        results = client.infer(images, batch_size=4, mode="async_infer")
    _assert_close(results, local[name])
    assert all(r.error is None for r in records) and len(records) == -(-len(images) // 4)


def test_poisoned_requests_do_not_fail_their_batch_neighbours(served, bad_dir):
    from concurrent.futures import ThreadPoolExecutor

    server, local, images = served
    bad = [str(bad_dir / name) for name in BAD_FILES]

    def good_client(k):
        with towhee.Client(server.grpc_url, model_name="image") as client:
            return [client.infer([images[(k + j) % len(images)]])[0] for j in range(6)]

    def poisoning_client(k):  # bad items next to good ones of another size, several per request
        with towhee.Client(server.grpc_url, model_name="image") as client:
            return client.infer([images[k], bad[k % len(bad)], images[k + 3]] * 2, batch_size=6,
                                errors="return")

    with ThreadPoolExecutor(6) as pool:  # the model step batches requests dynamically
        good = [pool.submit(good_client, k) for k in range(4)]
        poisoned = [pool.submit(poisoning_client, k) for k in range(2)]
        for k, future in enumerate(good):
            _assert_close(future.result(), [local["image"][(k + j) % len(images)]
                                            for j in range(6)])
        for k, future in enumerate(poisoned):
            outcome = future.result()
            assert [isinstance(r, ItemError) for r in outcome] == [False, True, False] * 2
            _assert_close([outcome[0], outcome[2]], [local["image"][k], local["image"][k + 3]])
    assert server.models_ready()


def test_threads_are_decided_where_the_model_runs(served):
    import os

    server, _, _ = served
    cores = len(os.sched_getaffinity(0))
    # The test_resnet model of "image" has 2 instances: each gets half the server's cores.
    line = f"operator image_embedding.timm on cpu, num_threads {max(1, cores // 2)}, format:"
    assert line in server.log_text()


def test_onnx_format_is_served_within_the_parity_bound_of_torch(served):
    server, local, images = served
    results = towhee.dc(images).remote(url=server.grpc_url, model_name="image_onnx",
                                       mode="async_infer")
    _assert_close(results, local["image_onnx"])  # same runtime: equal to the local ONNX run
    for got, want in zip(results, local["image"]):  # and within parity of the torch format
        assert float(np.max(np.abs(got - want))) / float(np.max(np.abs(want))) <= 1e-4


def test_int8_image_model_is_served_like_local_and_close_to_fp32(served):
    server, local, images = served
    results = towhee.dc(images).remote(url=server.grpc_url, model_name="image_int8",
                                       mode="async_infer")
    _assert_close(results, local["image_int8"])  # the repository carries the gated int8 model
    for got, want in zip(results, local["image"]):  # fp32 torch with full-size decode
        assert float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)) >= 0.99


def test_int8_minilm_served_keeps_cosine_to_sentence_transformers(served):
    from sentence_transformers import SentenceTransformer

    from towhee_rt.backends.text_embedding import bundled_minilm_dir

    server, _, _ = served
    results = np.stack(towhee.dc(SENTENCES).remote(url=server.grpc_url, model_name="minilm_int8",
                                                   mode="async_infer"))
    reference = SentenceTransformer(bundled_minilm_dir(), device="cpu").encode(SENTENCES)
    cosine = (results * reference).sum(1) / (np.linalg.norm(results, axis=1) *
                                             np.linalg.norm(reference, axis=1))
    assert cosine.min() >= 0.99, cosine


def test_unknown_model_gives_a_clear_client_error(served):
    server, _, _ = served
    with pytest.raises(towhee.ClientError, match="cannot read model 'nope'"):
        towhee.Client(server.grpc_url, model_name="nope").served  # read on first use
