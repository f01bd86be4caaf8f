"""towhee_rt.milvus on Milvus Lite (a local file, no server) with vectors made here: the
collection it creates, the fingerprint guard, failed items skipped, ids, search; and the install
hint without pymilvus. Real pipelines: tests/unit/test_milvus_pipelines.py and
tests/integration/test_milvus_served.py."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from towhee_rt import milvus
from towhee_rt.datacollection import Results
from towhee_rt.errors import BadInputError, ConfigError

FP, OTHER = "0123456789abcdef", "fedcba9876543210"


def _vectors(n, dim=8, seed=0):
    return list(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))


@pytest.fixture
def uri(tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    return str(tmp_path / "m.db")


def test_insert_creates_the_collection_and_search_finds_each_vector_first(uri):
    vectors = _vectors(6)
    ids = [f"img{k}.jpg" for k in range(6)]
    report = milvus.insert(uri, "photos", vectors, ids, FP)
    assert report.created and report.inserted == ids and report.skipped == []
    assert milvus.collection_fingerprint(uri, "photos") == FP
    client = milvus._connect(uri, None)[0]
    try:
        fields = {f["name"]: f for f in client.describe_collection("photos")["fields"]}
        assert fields["vector"]["params"]["dim"] == 8
        assert client.describe_index("photos", "vector")["metric_type"] == "COSINE"
    finally:
        client.close()
    hits = milvus.search(uri, "photos", vectors, limit=3, fingerprint=FP)
    assert [h[0][0] for h in hits] == ids
    assert all(abs(h[0][1] - 1.0) < 1e-4 and len(h) == 3 for h in hits)
    one = milvus.search(uri, "photos", vectors[2] * 3, limit=2)  # one vector: one list
    assert one[0][0] == "img2.jpg" and isinstance(one[0][1], float)
    # again: upsert replaces, the collection is reused
    again = milvus.insert(uri, "photos", vectors[:2], ids[:2], FP)
    assert not again.created and again.inserted == ids[:2]
    assert len(milvus.search(uri, "photos", vectors[0], limit=10)) == 6


def test_vectors_of_another_fingerprint_are_refused_naming_both(uri):
    milvus.insert(uri, "photos", _vectors(2), ["a", "b"], FP)
    with pytest.raises(ConfigError) as caught:
        milvus.insert(uri, "photos", _vectors(2, seed=1), ["c", "d"], OTHER)
    text = str(caught.value)
    assert FP in text and OTHER in text and "new collection" in text
    with pytest.raises(ConfigError, match=f"fingerprint {FP}.*{OTHER}"):
        milvus.search(uri, "photos", _vectors(1)[0], fingerprint=OTHER)
    assert len(milvus.search(uri, "photos", _vectors(1)[0], limit=5)) == 2  # nothing added


def test_failed_items_are_skipped_and_reported(uri, caplog):
    vectors = _vectors(3)
    failed = BadInputError(1, "image_decode.cv2_rgb", "empty input (0 bytes)", "empty.jpg")
    results = Results([vectors[0], failed, vectors[2]], ["a.jpg", "empty.jpg", "c.jpg"], FP)
    report = results.to_milvus(uri, "photos")
    assert report.inserted == ["a.jpg", "c.jpg"]
    assert report.skipped == [("empty.jpg", failed)]
    assert "1 failed items skipped: empty.jpg: item 1" in str(report)
    assert "empty.jpg" in caplog.text
    hits = results.search_milvus(uri, "photos", limit=1)
    assert hits[0][0][0] == "a.jpg" and hits[1] is failed and hits[2][0][0] == "c.jpg"


def test_ids_default_to_the_items_or_their_index_and_can_be_given(uri):
    vectors = _vectors(3)
    report = Results(vectors, ["x.jpg", b"\xff\xd8 raw bytes", np.zeros(3)], FP).to_milvus(
        uri, "a")
    assert report.inserted == ["x.jpg", "1", "2"]
    assert Results(vectors, [1, 2, 3], FP).to_milvus(uri, "b", ids=[7, 8, 9]).inserted == [
        "7", "8", "9"]
    with pytest.raises(ConfigError, match="given twice"):
        Results(vectors, ["x", "y", "x"], FP).to_milvus(uri, "c")
    with pytest.raises(ConfigError, match="one id per item"):
        Results(vectors, ["x", "y", "z"], FP).to_milvus(uri, "c", ids=["1"])


def test_metric_dimension_and_foreign_collections(uri):
    milvus.insert(uri, "ip", _vectors(2), ["a", "b"], FP, metric="ip")
    with pytest.raises(ConfigError, match="metric IP, not COSINE"):
        milvus.insert(uri, "ip", _vectors(1), ["c"], FP, metric="COSINE")
    milvus.insert(uri, "ip", _vectors(1), ["c"], FP)  # no metric=: the collection's
    with pytest.raises(ConfigError, match="8-d vectors, these are 4-d"):
        milvus.insert(uri, "ip", _vectors(1, dim=4), ["d"], FP)
    with pytest.raises(ConfigError, match="metric must be one of"):
        milvus.insert(uri, "x", _vectors(1), ["a"], FP, metric="hamming")
    with pytest.raises(ConfigError, match="carry no fingerprint"):
        Results(_vectors(1), ["a"], None).to_milvus(uri, "x")
    with pytest.raises(ConfigError, match="no collection 'nope'"):
        milvus.search(uri, "nope", _vectors(1)[0])
    from pymilvus import MilvusClient  # a collection someone else made

    client = MilvusClient(uri)
    try:
        client.create_collection("theirs", dimension=8)
    finally:
        client.close()
    with pytest.raises(ConfigError, match="not made by towhee_rt"):
        milvus.insert(uri, "theirs", _vectors(1), ["a"], FP)


def test_one_vector_per_item(uri):
    with pytest.raises(ConfigError, match="several outputs"):
        milvus.insert(uri, "x", [(np.zeros(3), np.zeros(3))], ["a"], FP)
    with pytest.raises(ConfigError, match=r"shape \(2, 3\)"):
        milvus.insert(uri, "x", [np.zeros((2, 3))], ["a"], FP)


def test_without_pymilvus_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import pymilvus raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'towhee_rt\[milvus\]'"):
        milvus.insert(str(tmp_path / "m.db"), "x", _vectors(1), ["a"], FP)
