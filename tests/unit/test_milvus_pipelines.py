"""Local pipelines into Milvus Lite and back: photos indexed, their re-encoded copies find them
(exact-duplicate retrieval only: the image model has RANDOM weights, so no other neighbour
means anything); a pipeline of another fingerprint is refused. Text with real weights:
tests/integration/test_milvus_served.py."""
from __future__ import annotations

import cv2
import pytest

import towhee_rt as towhee
from towhee_rt import samples
from towhee_rt.errors import ConfigError

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

PHOTOS = ["astronaut.jpg", "rocket.jpg", "camera_gray.jpg", "chelsea.jpg", "coffee.jpg"]


def _chain(items, seed=0):
    """Decode + timm test_resnet with RANDOM weights (seeded): a duplicate finder only."""
    return (towhee.dc(items).image_decode.cv2_rgb()
            .image_embedding.timm(model_name="test_resnet", pretrained=False, seed=seed))


def _reencoded(path, target, quality=70):
    image = cv2.imread(str(path))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    target.write_bytes(data.tobytes())
    return str(target)


def test_photos_in_their_reencoded_copies_find_them_first(tmp_path, good_dir):
    uri = str(tmp_path / "m.db")
    photos = [str(good_dir / name) for name in PHOTOS] + [samples.path("empty.jpg")]
    report = _chain(photos).to_milvus(uri, "photos")
    assert report.created and report.inserted == photos[:-1]
    assert [i for i, _ in report.skipped] == [photos[-1]]  # empty.jpg: reported, not inserted
    assert "empty input" in str(report.skipped[0][1])
    copies = [_reencoded(path, tmp_path / f"copy_{k}.jpg") for k, path in
              enumerate(photos[:-1])]
    hits = _chain(copies).search_milvus(uri, "photos", limit=3)
    assert [h[0][0] for h in hits] == photos[:-1], hits
    assert all(h[0][1] > 0.9 for h in hits)


def test_another_pipeline_cannot_insert_into_the_collection(tmp_path, good_dir):
    uri = str(tmp_path / "m.db")
    photos = [str(good_dir / name) for name in PHOTOS[:2]]
    first = _chain(photos).to_milvus(uri, "photos")
    with pytest.raises(ConfigError) as caught:
        _chain(photos, seed=1).to_milvus(uri, "photos")   # other weights, same dimension
    message = str(caught.value)
    assert first.fingerprint in message and "cannot be compared" in message
    other = _chain(photos, seed=1).to_list()
    assert other.fingerprint != first.fingerprint and other.fingerprint in message
    with pytest.raises(ConfigError, match="before .remote|add the pipeline's operators"):
        towhee.dc(photos).to_milvus(uri, "photos")
