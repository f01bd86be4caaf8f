"""cv2_rgb(min_side=...): large JPEGs decoded at reduced scale with libjpeg's DCT scaling."""
import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.backends.image_decode import CV2RGBDecode


def _decode(path, **params):
    op = CV2RGBDecode(in_process=True, **params)
    op.ensure_setup("cpu")
    return op.process_batch({"image": [str(path)]})["image"][0]


@pytest.mark.parametrize("name, min_side, shape", [
    ("coffee_1920x1280.jpg", 256, (320, 480, 3)),   # 1280 // 4 = 320 >= 256; // 8 = 160 is not
    ("astronaut.jpg", 256, (256, 256, 3)),
    ("chelsea.jpg", 256, (300, 451, 3)),            # not twice the target: full size
    ("chelsea_exif_rot90.jpg", 100, (226, 150, 3)),  # orientation still applied
    ("camera_gray.png", 64, (512, 512, 3)),         # not a JPEG: full size
    ("coffee_1920x1280.jpg", None, (1280, 1920, 3)),
])
def test_reduced_shapes(good_dir, name, min_side, shape):
    assert _decode(good_dir / name, min_side=min_side).shape == shape


def test_reduced_decode_looks_like_a_resized_full_decode(good_dir):
    import cv2

    small = _decode(good_dir / "coffee_1920x1280.jpg", min_side=256)
    full = _decode(good_dir / "coffee_1920x1280.jpg")
    resized = cv2.resize(full, small.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - resized.astype(int)).mean() < 3


def test_embedding_stays_within_the_int8_gate(good_dir):
    files = [str(good_dir / n) for n in ("coffee_1920x1280.jpg", "astronaut.jpg", "rocket.jpg")]
    full, reduced = (
        (towhee.dummy_input().image_decode.cv2_rgb(**params)
         .image_embedding.timm(model_name="test_resnet", pretrained=False).as_function())(files)
        for params in ({}, {"min_side": 256}))
    for a, b in zip(full, reduced):
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.99


def test_min_side_is_validated():
    with pytest.raises(ValueError, match="param 'min_side' must be positive"):
        CV2RGBDecode(min_side=0)


def test_max_pixels_counts_the_pixels_actually_decoded(good_dir):
    # coffee_1920x1280.jpg holds 2,457,600 pixels; at 1/4 scale (min_side 256) 153,600.
    data = (good_dir / "coffee_1920x1280.jpg").read_bytes()
    scaled = CV2RGBDecode(max_pixels=1_000_000, min_side=256)
    assert scaled.process_batch({"image": [data]})["image"][0].shape == (320, 480, 3)
    with pytest.raises(ValueError, match="1920x1280 = 2,457,600 pixels, more than max_pixels"):
        CV2RGBDecode(max_pixels=1_000_000).process_batch({"image": [data]})
