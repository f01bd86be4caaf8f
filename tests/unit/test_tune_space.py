"""The tuner's search space: reading a repository's settings, writing a point into its configs
(valid for Triton, nothing else changed), and the one-knob moves within the limits."""
import dataclasses
import json

import pytest

from towhee_rt.backends.operator_base import TensorSpec
from towhee_rt.backends.cpu import cpu_threads_per_instance
from towhee_rt.errors import ConfigError
from towhee_rt.op_config import DynamicBatching, OpConfig
from towhee_rt.triton import config as tc
from towhee_rt.client.client import PARAM_CLIENT_CONCURRENCY
from towhee_rt.tune.space import (Space, StepSettings, apply_point, find_pipeline,
                                  read_point, record_concurrency, recorded_concurrency)

DECODE = tc.OperatorModel(
    "pipeline_0_image_decode_cv2_rgb", "image_decode.cv2_rgb", "image_decode", "CV2RGBDecode",
    {}, (TensorSpec("image", "bytes"),), (TensorSpec("image", "uint8", (-1, -1, 3)),),
    OpConfig(instance_count=1))
EMBED = tc.OperatorModel(
    "pipeline_1_image_embedding_timm", "image_embedding.timm", "image_embedding",
    "TimmImageEmbedding", {"model_name": "resnet50"},
    (TensorSpec("image", "uint8", (-1, -1, 3)),), (TensorSpec("embedding", "float32", (-1,)),),
    OpConfig(instance_count=2, dynamic_batching=DynamicBatching(16, (4, 16), 2000)))
DECODE_NAME, EMBED_NAME = DECODE.model_name, EMBED.model_name


@pytest.fixture
def configs():
    return {DECODE_NAME: tc.operator_model_config(DECODE),
            EMBED_NAME: tc.operator_model_config(EMBED),
            "pipeline": tc.ensemble_config("pipeline", [DECODE, EMBED])}


def test_the_pipeline_its_steps_and_which_take_threads(configs):
    pipeline = find_pipeline(configs)
    assert pipeline.ensemble == "pipeline"
    assert pipeline.steps == (DECODE_NAME, EMBED_NAME)
    assert pipeline.threaded == (EMBED_NAME,)  # the decoder has no num_threads
    assert pipeline.short_name(EMBED_NAME) == "image_embedding_timm"


def test_a_pipeline_must_be_named_when_there_are_several(configs):
    configs["other"] = configs["pipeline"]
    with pytest.raises(ConfigError, match="2 pipelines.*--model"):
        find_pipeline(configs)
    assert find_pipeline(configs, "other").ensemble == "other"
    with pytest.raises(ConfigError, match="not a pipeline"):
        find_pipeline(configs, DECODE_NAME)


def test_the_current_settings_are_read_from_the_configs(configs):
    point = read_point(configs, find_pipeline(configs), concurrency=8)
    assert point.concurrency == 8
    assert point.step(DECODE_NAME) == StepSettings(1, None, False, 0, 16)
    assert point.step(EMBED_NAME) == StepSettings(2, None, True, 2000, 16)


def test_a_point_is_written_into_the_configs_and_reads_back(configs):
    pipeline = find_pipeline(configs)
    before = {name: tc.to_pbtxt(c) for name, c in configs.items()}
    point = read_point(configs, pipeline, 4)
    point = point.replace_step(EMBED_NAME, instances=3, threads=1, queue_delay_us=5000,
                               max_batch=8)
    point = point.replace_step(DECODE_NAME, batching=True, queue_delay_us=500)
    written = apply_point(configs, pipeline, point)

    assert {name: tc.to_pbtxt(c) for name, c in configs.items()} == before  # inputs untouched
    for name, config in written.items():  # valid for Triton's protobuf
        assert tc.parse_pbtxt(tc.to_pbtxt(config)) == config
    assert read_point(written, pipeline, 4) == point
    embed = written[EMBED_NAME]
    assert embed.instance_group[0].count == 3
    assert json.loads(tc.read_parameters(embed)["towhee_params"]) == {
        "model_name": "resnet50", "num_threads": 1}
    assert embed.max_batch_size == 8
    assert list(embed.dynamic_batching.preferred_batch_size) == [4]  # 16 > max batch: dropped
    assert embed.dynamic_batching.max_queue_delay_microseconds == 5000
    assert embed.dynamic_batching.default_queue_policy.max_queue_size == 64  # queue kept
    decode = tc.read_parameters(written[DECODE_NAME])
    assert decode["towhee_merge_requests"] == "yes"
    # Batching turned on: the not-merging size 1 does not stay (it would stop every batch).
    assert list(written[DECODE_NAME].dynamic_batching.preferred_batch_size) == []
    assert written["pipeline"].max_batch_size == 8  # <= every step's, as Triton requires


def test_batching_off_and_automatic_threads_are_written_as_the_builder_does(configs):
    pipeline = find_pipeline(configs)
    point = read_point(configs, pipeline, 1).replace_step(EMBED_NAME, batching=False)
    threaded = apply_point(configs, pipeline, point.replace_step(EMBED_NAME, threads=2))
    written = apply_point(threaded, pipeline, point)
    embed = written[EMBED_NAME]
    assert tc.read_parameters(embed)["towhee_merge_requests"] == "no"
    assert embed.dynamic_batching.max_queue_delay_microseconds == 0
    assert list(embed.dynamic_batching.preferred_batch_size) == [1]  # one request per execution
    assert "num_threads" not in json.loads(tc.read_parameters(embed)["towhee_params"])
    # What the builder writes for the same settings (instance_count 2, no dynamic batching).
    built = tc.operator_model_config(dataclasses.replace(EMBED, config=OpConfig(instance_count=2)))
    assert embed == built
    assert written["pipeline"].max_batch_size == 16


def test_moves_change_one_knob_within_the_limits(configs):
    pipeline = find_pipeline(configs)
    start = read_point(configs, pipeline, 8)
    space = Space(pipeline, cores=2, max_instances=4)
    moves = space.moves(start)
    texts = [text for text, _ in moves]
    assert texts[0] == "image_embedding_timm: 3 instances"  # the last step first
    assert "8 in flight" not in texts and {"16 in flight", "4 in flight"} <= set(texts)
    assert not any("decode" in t and "threads" in t for t in texts)
    for _, point in moves:
        changed = [n for n, s in point.steps if s != start.step(n)]
        assert len(changed) + (point.concurrency != start.concurrency) == 1
        assert point.total_instances <= 4
    # At the limit no move adds an instance; a fixed load is never moved.
    full = start.replace_step(DECODE_NAME, instances=2)
    fixed = Space(pipeline, cores=2, max_instances=4, concurrency=8)
    texts = [text for text, _ in fixed.moves(full)]
    assert not any(t.endswith("3 instances") for t in texts)
    assert not any("in flight" in t for t in texts)


def test_a_thread_move_back_to_the_default_is_the_default(configs):
    pipeline = find_pipeline(configs)
    start = read_point(configs, pipeline, 8)
    space = Space(pipeline, cores=4, max_instances=8)
    auto = cpu_threads_per_instance(2)
    threads = {text: p.step(EMBED_NAME).threads for text, p in space.moves(start)
               if "threads" in text}
    assert threads == {f"image_embedding_timm: {v} threads": v for v in (auto + 1, auto - 1)
                       if v >= 1}
    explicit = start.replace_step(EMBED_NAME, threads=auto + 1)
    back = [p for text, p in space.moves(explicit) if text.endswith(f"{auto} threads")]
    assert back and back[0].step(EMBED_NAME).threads is None


def test_the_client_concurrency_is_recorded_in_the_ensemble_and_read_back(configs):
    ensemble = configs["pipeline"]
    assert recorded_concurrency(ensemble) is None  # built, never tuned
    tuned = record_concurrency(ensemble, 8)
    assert PARAM_CLIENT_CONCURRENCY not in ensemble.parameters  # the input is left as it was
    assert tuned.parameters[PARAM_CLIENT_CONCURRENCY].string_value == "8"
    assert recorded_concurrency(tuned) == 8
    # Everything else of the ensemble is unchanged, and Triton's protobuf parses it.
    del tuned.parameters[PARAM_CLIENT_CONCURRENCY]
    assert tuned == ensemble
    assert tc.parse_pbtxt(tc.to_pbtxt(record_concurrency(ensemble, 2))) == \
        record_concurrency(ensemble, 2)
    # A hand-edited value the client would not use is not a start point either.
    for bad in ("0", "-3", "many", "100000"):
        edited = record_concurrency(ensemble, 1)
        edited.parameters[PARAM_CLIENT_CONCURRENCY].string_value = bad
        assert recorded_concurrency(edited) is None, bad
