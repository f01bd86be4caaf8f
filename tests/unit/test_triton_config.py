"""config.pbtxt generation: golden files, round trip, and each op_config key's effect."""
import dataclasses
from pathlib import Path

import pytest

from towhee_rt.backends.operator_base import TensorSpec
from towhee_rt.errors import ConfigError
from towhee_rt.op_config import DynamicBatching, OpConfig, RequestLimits
from towhee_rt.triton import config as tc

GOLDEN = Path(__file__).parent / "golden"
DECODE_IO = ((TensorSpec("image", "bytes"),), (TensorSpec("image", "uint8", (-1, -1, 3)),))
EMBED_IO = ((TensorSpec("image", "uint8", (-1, -1, 3)),),
            (TensorSpec("embedding", "float32", (-1,)),))


def _model(name, operator, io, config, params=None, fmt=""):
    module, cls = {"image_decode.cv2_rgb": ("image_decode", "CV2RGBDecode"),
                   "image_embedding.timm": ("image_embedding", "TimmImageEmbedding")}[operator]
    return tc.OperatorModel(name, operator, module, cls, params or {}, io[0], io[1], config, fmt)


DECODE = dataclasses.replace(
    _model("pipeline_0_image_decode_cv2_rgb", "image_decode.cv2_rgb", DECODE_IO,
           OpConfig(instance_count=2)), limits=RequestLimits(),  # the first model checks them
    shaped_outputs=("image",),  # images of different sizes travel padded, with their shapes
    passes_deadline=True)  # the request's deadline goes on to the next step
EMBED = dataclasses.replace(
    _model("pipeline_1_image_embedding_timm", "image_embedding.timm", EMBED_IO,
           OpConfig(device_ids=(0,), dynamic_batching=DynamicBatching(8, (4, 8), 500)),
           params={"model_name": "resnet50"}, fmt="onnx"), shaped_inputs=("image",),
    takes_deadline=True)


@pytest.mark.parametrize("name, config", [
    ("decode.pbtxt", lambda: tc.operator_model_config(DECODE)),
    ("embed.pbtxt", lambda: tc.operator_model_config(EMBED)),
    ("ensemble.pbtxt", lambda: tc.ensemble_config("pipeline", [DECODE, EMBED],
                                                  fingerprint="0123456789abcdef")),
])
def test_configs_match_golden_files(name, config):
    assert tc.to_pbtxt(config()) == (GOLDEN / name).read_text()


def test_round_trip_through_triton_protobuf():
    config = tc.operator_model_config(EMBED)
    assert tc.parse_pbtxt(tc.to_pbtxt(config)) == config
    assert tc.read_parameters(config)["towhee_params"] == '{"model_name": "resnet50"}'


def test_parse_rejects_unknown_fields():
    with pytest.raises(Exception, match="instance_groups"):
        tc.parse_pbtxt('name: "x"\ninstance_groups { count: 1 }\n')


def test_instance_count_and_kind():
    cpu = tc.operator_model_config(DECODE).instance_group[0]
    gpu = tc.operator_model_config(EMBED).instance_group[0]
    assert (cpu.count, tc.pb.ModelInstanceGroup.Kind.Name(cpu.kind)) == (2, "KIND_CPU")
    assert (gpu.count, list(gpu.gpus)) == (1, [0])
    assert tc.pb.ModelInstanceGroup.Kind.Name(gpu.kind) == "KIND_GPU"


def test_gpu_models_keep_tensors_on_gpu_and_cpu_models_do_not_ask():
    assert tc.read_parameters(tc.operator_model_config(EMBED))[
        "FORCE_CPU_ONLY_INPUT_TENSORS"] == "no"
    assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in tc.read_parameters(
        tc.operator_model_config(DECODE))


def test_ensemble_batch_size_is_the_smallest_step():
    ensemble = tc.ensemble_config("pipeline", [DECODE, EMBED])
    assert ensemble.max_batch_size == 8
    assert not ensemble.instance_group
    steps = ensemble.ensemble_scheduling.step
    shaped = {"image": "step0_image", "image__shapes": "step0_image__shapes",
              "towhee_deadline": "step0_towhee_deadline"}
    assert dict(steps[0].output_map) == shaped and dict(steps[1].input_map) == shaped
    assert dict(steps[1].output_map) == {"embedding": "embedding"}


def test_variable_shape_array_inputs_are_ragged():
    assert tc.operator_model_config(EMBED).input[0].allow_ragged_batch
    assert not tc.operator_model_config(DECODE).input[0].allow_ragged_batch  # bytes: scalar


def test_every_model_has_a_bounded_queue_and_merges_requests_only_when_batching():
    for model, merge in ((DECODE, "no"), (EMBED, "yes")):
        config = tc.operator_model_config(model)
        policy = config.dynamic_batching.default_queue_policy
        assert (policy.max_queue_size, policy.default_timeout_microseconds) == (64, 5_000_000)
        assert policy.allow_timeout_override and policy.timeout_action == policy.REJECT
        assert tc.read_parameters(config)["towhee_merge_requests"] == merge
        # Not merging: one request per execution, so its answer is not held for the others'.
        assert list(config.dynamic_batching.preferred_batch_size) == \
            ([1] if merge == "no" else [4, 8])
    decode = dataclasses.replace(DECODE, config=OpConfig(max_queue_size=3,
                                                         queue_timeout_ms=250))
    policy = tc.operator_model_config(decode).dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (3, 250_000)


def test_repository_configs_are_read_and_written_back(tmp_path):
    decode, embed = tc.operator_model_config(DECODE), tc.operator_model_config(EMBED)
    for config in (decode, embed):
        (tmp_path / config.name).mkdir()
        tc.write_config(tmp_path, config.name, config)
    assert tc.read_repository(tmp_path) == {decode.name: decode, embed.name: embed}
    (tmp_path / decode.name / "config.pbtxt").write_text("instance_groups { count: 1 }\n")
    with pytest.raises(ConfigError, match="not a valid Triton model config"):
        tc.read_repository(tmp_path)
    with pytest.raises(ConfigError, match="holds no model"):
        tc.read_repository(tmp_path / decode.name)
    with pytest.raises(ConfigError, match="not a directory"):
        tc.read_repository(tmp_path / "missing")


def test_the_deadline_travels_from_step_to_step():
    """Every step but the first takes the deadline (optional: a request sent to the model
    itself needs none), every step but the last passes it, and the ensemble wires each pair."""
    decode, embed = tc.operator_model_config(DECODE), tc.operator_model_config(EMBED)
    assert [t.name for t in decode.output if t.name == "towhee_deadline"] == ["towhee_deadline"]
    assert "towhee_deadline" not in [t.name for t in decode.input]
    taken = [t for t in embed.input if t.name == "towhee_deadline"]
    assert len(taken) == 1 and taken[0].optional and list(taken[0].dims) == [1]
    assert "towhee_deadline" not in [t.name for t in embed.output]
    steps = tc.ensemble_config("pipeline", [DECODE, EMBED]).ensemble_scheduling.step
    assert steps[0].output_map["towhee_deadline"] == steps[1].input_map["towhee_deadline"]
    assert "towhee_deadline" not in steps[0].input_map
    assert "towhee_deadline" not in steps[1].output_map
    # models that do not declare it (older plans) are wired without it
    plain = tc.ensemble_config("pipeline", [dataclasses.replace(DECODE, passes_deadline=False),
                                            EMBED]).ensemble_scheduling.step
    assert "towhee_deadline" not in plain[1].input_map
