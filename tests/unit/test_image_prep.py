"""``preprocess='cv2'`` and the decoder's ``resize_crop`` against the libraries' own transforms.

The end-to-end embedding check (cosine >= 0.999 on every test image) is bench/preprocess_check.py;
here: the model inputs themselves, on the shared test images, and the rules (sizes, errors).
"""
from __future__ import annotations

import numpy as np
import pytest

from towhee_rt.backends.cv2_preprocess import Cv2Preprocess, ResizeCrop
from towhee_rt.backends.operator_base import OperatorInputError, OperatorParamError
from towhee_rt.backends.clip import ClipImageEmbedding
from towhee_rt.backends.image_decode import CV2RGBDecode
from towhee_rt.backends.image_embedding import TimmImageEmbedding

IMAGES = ["astronaut.jpg", "chelsea.jpg", "coffee_1920x1280.jpg", "chelsea_exif_rot90.jpg",
          "camera_gray.png"]


def _decoded(good_dir, **params):
    decoder = CV2RGBDecode(**params)
    decoder.ensure_setup("cpu")
    return [decoder.decode((good_dir / name).read_bytes()) for name in IMAGES]


def _cosines(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("make", [
    lambda **p: TimmImageEmbedding(model_name="resnet50", pretrained=False, **p),
    lambda **p: ClipImageEmbedding(model_name="clip_vit_base_patch32", pretrained=False, **p),
], ids=["timm-resnet50", "clip-vit-b32"])
def test_cv2_inputs_match_the_reference_transform(good_dir, make):
    images = _decoded(good_dir)
    reference = make().preprocess({"image": images})["image"]
    fast = make(preprocess="cv2").preprocess({"image": images})["image"]
    assert fast.shape == reference.shape and fast.dtype == np.float32
    assert _cosines(fast, reference).min() > 0.998
    # Same normalisation: the per-channel means agree closely, not only the directions.
    np.testing.assert_allclose(fast.mean(axis=(0, 2, 3)), reference.mean(axis=(0, 2, 3)),
                               atol=0.02)


def test_decode_resize_crop_hands_over_the_model_sized_image(good_dir):
    model = TimmImageEmbedding(model_name="resnet50", pretrained=False)
    reference = model.preprocess({"image": _decoded(good_dir)})["image"]
    cropped = _decoded(good_dir, min_side=256, resize_crop=[235, 224, 224])
    assert {image.shape for image in cropped} == {(224, 224, 3)}
    fast = TimmImageEmbedding(model_name="resnet50", pretrained=False, preprocess="cv2")
    inputs = fast.preprocess({"image": cropped})["image"]
    assert _cosines(inputs, reference).min() > 0.997


def test_resize_follows_torchvision_sizes_and_centre():
    image = np.zeros((300, 451, 3), np.uint8)
    image[:, 225] = 255  # a bright column at the centre stays at the centre
    out = ResizeCrop(235, (224, 224)).apply(image)
    assert out.shape == (224, 224, 3)
    assert abs(int(np.argmax(out[112, :, 0])) - 112) <= 1
    small = np.full((100, 150, 3), 7, np.uint8)  # enlarged, then cropped
    assert ResizeCrop(235, (224, 224)).apply(small).shape == (224, 224, 3)


def test_an_item_at_the_model_size_is_only_normalised():
    prep = Cv2Preprocess(ResizeCrop(235, (224, 224)), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    out = prep([image])[0]
    expected = (image.astype(np.float32) / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)


def test_bad_items_and_unsupported_transforms_are_refused():
    op = TimmImageEmbedding(model_name="resnet50", pretrained=False, preprocess="cv2")
    with pytest.raises(OperatorInputError, match="uint8 array"):
        op.preprocess({"image": [np.zeros((8, 8), np.uint8)]})
    from torchvision import transforms

    with pytest.raises(OperatorParamError, match="preprocess='reference'"):
        Cv2Preprocess.from_transform(transforms.Compose([transforms.Resize(256),
                                                         transforms.RandomHorizontalFlip()]),
                                     "op")
    with pytest.raises(OperatorParamError, match="must be one of reference, cv2"):
        TimmImageEmbedding(model_name="resnet50", preprocess="pil")
    with pytest.raises(OperatorParamError, match="shorter side at least the crop"):
        CV2RGBDecode(resize_crop=[200, 224, 224])
