"""The local pipeline: one input / a list, order under parallel and chunksize, per-item errors."""
import random

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.errors import ItemError, PipelineError

from ..conftest import BAD_FILES, GOOD_SHAPES


def _decode(**op_config):
    return towhee.dummy_input().image_decode.cv2_rgb(op_config=op_config or None).as_function()


def test_one_input_gives_one_result_and_a_list_gives_a_list(good_dir):
    pipe = _decode()
    image = pipe(str(good_dir / "chelsea.jpg"))
    assert image.shape == (300, 451, 3) and image.dtype == np.uint8
    images = pipe([str(good_dir / "chelsea.jpg"), str(good_dir / "rocket.jpg")])
    assert [i.shape for i in images] == [(300, 451, 3), (427, 640, 3)]


@pytest.mark.parametrize("parallel, chunksize", [(1, 1), (2, 3), (3, 2), (4, 100)])
def test_order_is_preserved_under_parallel_and_chunksize(good_dir, parallel, chunksize):
    names = list(GOOD_SHAPES) * 3
    random.Random(parallel * 10 + chunksize).shuffle(names)
    pipe = (towhee.dummy_input().pipeline_config(parallel=parallel, chunksize=chunksize)
            .image_decode.cv2_rgb().as_function())
    results = pipe([str(good_dir / n) for n in names])
    assert [r.shape for r in results] == [GOOD_SHAPES[n] for n in names]
    pipe.close()


def test_bad_items_get_named_errors_and_good_items_are_kept(good_dir, bad_dir):
    items = [str(good_dir / "chelsea.jpg")] + [str(bad_dir / b) for b in BAD_FILES] + \
        [str(good_dir / "coffee.jpg")]
    pipe = (towhee.dummy_input().pipeline_config(chunksize=4, parallel=2)
            .image_decode.cv2_rgb().as_function())
    results = pipe(items, errors="return")
    assert results[0].shape == (300, 451, 3) and results[-1].shape == (400, 600, 3)
    for index, name in enumerate(BAD_FILES, start=1):
        error = results[index]
        assert isinstance(error, ItemError)
        assert (error.index, error.operator) == (index, "image_decode.cv2_rgb")
        assert name in error.source and f"item {index}" in str(error) and name in str(error)

    with pytest.raises(PipelineError) as info:
        pipe(items)
    assert len(info.value.errors) == len(BAD_FILES)
    assert info.value.results[0].shape == (300, 451, 3)  # nothing is lost when raising


def test_single_bad_input_raises_item_error(bad_dir):
    with pytest.raises(ItemError, match="empty.jpg"):
        _decode()(str(bad_dir / "empty.jpg"))


def test_errors_mode_is_validated(good_dir):
    with pytest.raises(towhee.ConfigError, match="errors must be one of"):
        _decode()(str(good_dir / "chelsea.jpg"), errors="ignore")


def test_dc_to_list_runs_the_same_chain(good_dir):
    files = [str(good_dir / "chelsea.jpg"), str(good_dir / "coffee.jpg")]
    via_dc = towhee.dc(files).image_decode.cv2_rgb().to_list()
    via_pipe = _decode()(files)
    assert all(np.array_equal(a, b) for a, b in zip(via_dc, via_pipe))
    assert towhee.dc(files).to_list() == files


def test_server_only_keys_are_stored_not_used_locally(good_dir):
    pipe = _decode(instance_count=3, dynamic_batching={"max_batch_size": 4})
    assert pipe.configs[0].instances == 3
    assert pipe.configs[0].dynamic_batching.max_batch_size == 4
    assert pipe(str(good_dir / "chelsea.jpg")).shape == (300, 451, 3)


@pytest.mark.parametrize("build, message", [
    (lambda: towhee.dummy_input().pipeline_config(instance_count=2),
     r"'instance_count': set per operator, .<namespace>.<operator>\(op_config="),
    (lambda: towhee.dummy_input().image_decode.cv2_rgb(op_config={"max_request_bytes": 5}),
     r"'max_request_bytes': set for the whole pipeline, pipeline_config\(max_request_bytes="),
    (lambda: towhee.dummy_input().image_decode.cv2_rgb(op_config={"max_pixels": 5}),
     r"an operator param is a keyword argument of the operator itself, "
     r".image_decode.cv2_rgb\(max_pixels=...\)"),
    (lambda: towhee.dummy_input().pipeline_config(max_item_bytes=10, max_request_bytes=5)
     .image_decode.cv2_rgb().as_function().build(),
     "lower max_item_bytes or raise max_request_bytes"),
    (lambda: towhee.dummy_input().pipeline_config(format_priority=["onnx", "onnx"]),
     "list each format once"),
    (lambda: towhee.dummy_input().image_decode.cv2_rgb(op_config={"dynamic_batching": {
        "max_batch_size": 4, "preferred_batch_size": [8]}}),
     "preferred_batch_size 8 exceeds max_batch_size 4; lower it or raise max_batch_size"),
])
def test_config_errors_say_what_to_do(build, message):
    with pytest.raises(towhee.ConfigError, match=message):
        build()
