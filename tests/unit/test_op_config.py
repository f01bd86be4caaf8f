"""pipeline_config / op_config validation and merging."""
import pytest

import towhee_rt as towhee
from towhee_rt import op_config as cfg
from towhee_rt.errors import ConfigError


def test_op_config_overrides_pipeline_config():
    pipe = (towhee.dummy_input()
            .pipeline_config(parallel=3, chunksize=4, format_priority=["onnx"])
            .image_decode.cv2_rgb()
            .image_embedding.timm(model_name="test_resnet", pretrained=False,
                                  op_config={"chunksize": 2, "instance_count": 2,
                                             "dynamic_batching": True})
            .as_function())
    decode, embed = pipe.configs
    assert (decode.parallel, decode.chunksize, decode.format_priority) == (3, 4, ())
    assert (embed.parallel, embed.chunksize, embed.format_priority) == (3, 2, ("onnx",))
    assert embed.instances == 2 and decode.instances == 3  # parallel is the default count
    assert embed.dynamic_batching == cfg.DynamicBatching()


@pytest.mark.parametrize("values, fragment", [
    ({"paralel": 2}, "valid keys are: parallel, chunksize, jit, format_priority, "
                     "calibration_data, int8_min_cosine, accuracy_gate, max_queue_size, "
                     "queue_timeout_ms, max_request_bytes, max_item_bytes"),
    ({"calibration_data": "a.jpg"}, "must be a list of pipeline inputs"),
    ({"int8_min_cosine": 1.5}, "number in (0, 1]"),
    ({"parallel": 0}, "positive integer"),
    ({"chunksize": "8"}, "positive integer"),
    ({"jit": "numba"}, "'towhee', 'torch'"),
    ({"format_priority": ["onnx", "tflite"]}, "valid formats are: tensorrt, tensorrt_fp16, onnx_int8, onnx, torch"),
    ({"format_priority": []}, "non-empty list"),
])
def test_pipeline_config_rejects_bad_values(values, fragment):
    with pytest.raises(ConfigError, match=".*") as info:
        towhee.dummy_input().pipeline_config(**values)
    assert fragment in str(info.value)


@pytest.mark.parametrize("op_config, fragment", [
    ({"instance_cout": 2}, "valid keys are: parallel, chunksize, jit, format_priority, "
                           "calibration_data, int8_min_cosine, accuracy_gate, max_queue_size, "
                           "queue_timeout_ms, dynamic_batching, device_ids, instance_count"),
    ({"device_ids": 0}, "list of GPU indices"),
    ({"device_ids": [-1]}, "list of GPU indices"),
    ({"instance_count": True}, "positive integer"),
    ({"dynamic_batching": {"max_batch": 4}}, "valid keys are: max_batch_size"),
    ({"dynamic_batching": {"max_batch_size": 4, "preferred_batch_size": [8]}},
     "exceeds max_batch_size"),
    ({"dynamic_batching": "yes"}, "True, False or a dict"),
    ("parallel=2", "op_config must be a dict"),
])
def test_op_config_rejects_bad_values(op_config, fragment):
    with pytest.raises(ConfigError) as info:
        towhee.dummy_input().image_decode.cv2_rgb(op_config=op_config)
    assert fragment in str(info.value)
    assert "image_decode.cv2_rgb" in str(info.value)


def test_model_only_keys_rejected_on_decode_operator():
    with pytest.raises(ConfigError, match="only applies to model operators"):
        towhee.dummy_input().image_decode.cv2_rgb(op_config={"jit": "towhee"}).as_function()


def test_dynamic_batching_dict_is_normalised():
    values = cfg.validate_op_config({"dynamic_batching": {
        "max_batch_size": 8, "preferred_batch_size": 4, "max_queue_delay_microseconds": 0}},
        "x")
    assert values["dynamic_batching"] == cfg.DynamicBatching(8, (4,), 0)


def test_unknown_names_list_the_choices():
    with pytest.raises(ConfigError, match="valid namespaces are: image_decode, image_embedding"):
        towhee.dummy_input().image_decoder
    with pytest.raises(ConfigError, match="operators in 'image_decode' are: cv2_rgb, dali, nvjpeg"):
        towhee.dummy_input().image_decode.pil()


def test_params_must_be_json_serialisable():
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        towhee.dummy_input().image_embedding.timm(model_name=object())


def test_chain_type_mismatch_is_reported():
    with pytest.raises(ConfigError, match="cannot feed"):
        (towhee.dummy_input().image_embedding.timm(model_name="test_resnet", pretrained=False)
         .text_embedding.sentence_transformers().as_function())


def test_empty_pipeline_is_rejected():
    with pytest.raises(ConfigError, match="no operators"):
        towhee.dummy_input().as_function()


@pytest.mark.parametrize("cores, instances", [(1, 1), (2, 2), (4, 2), (8, 2), (16, 4), (64, 16)])
def test_default_instance_count_follows_the_cores(cores, instances):
    # 2 cores: two single-threaded instances, as measured (bench/results).
    assert cfg.default_cpu_model_instances(cores) == instances


def test_config_keys_are_declared_once():
    import dataclasses

    assert set(cfg.OP_KEYS) == {f.name for f in dataclasses.fields(cfg.OpConfig)}
    pipeline_only = set(cfg.PIPELINE_KEYS) - set(cfg.OP_KEYS)
    assert pipeline_only == {f.name for f in dataclasses.fields(cfg.RequestLimits)}


def test_request_limits_are_pipeline_wide():
    pipe = (towhee.dummy_input().pipeline_config(max_item_bytes=1000, max_request_bytes=5000)
            .image_decode.cv2_rgb().as_function())
    assert pipe.build().limits == cfg.RequestLimits(5000, 1000)
    with pytest.raises(ConfigError, match="max_item_bytes .* exceeds max_request_bytes"):
        towhee.dummy_input().pipeline_config(max_item_bytes=10, max_request_bytes=5) \
            .image_decode.cv2_rgb().as_function()
    with pytest.raises(ConfigError, match="valid keys are: parallel"):
        towhee.dummy_input().image_decode.cv2_rgb(op_config={"max_item_bytes": 10})


def test_cpu_model_operators_get_the_default_instance_count():
    pipe = (towhee.dummy_input().image_decode.cv2_rgb()
            .image_embedding.timm(model_name="test_resnet", pretrained=False).as_function())
    decode, embed = pipe.configs
    assert (decode.instances, embed.instances) == (1, cfg.default_cpu_model_instances())
    explicit = (towhee.dummy_input().pipeline_config(parallel=1)
                .image_embedding.timm(model_name="test_resnet", pretrained=False).as_function())
    assert explicit.configs[0].instances == 1
    gpu = towhee.dummy_input().image_embedding.timm(
        model_name="test_resnet", pretrained=False, op_config={"device_ids": [0]}).as_function()
    assert gpu.configs[0].instances == 1
