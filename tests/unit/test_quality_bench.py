"""bench/quality.py's pieces (issue 20): the edits, the metrics and the text corpus."""
import numpy as np

from bench import quality, quality_data


def test_edits_make_decodable_queries_and_the_metrics_count_right():
    from PIL import Image
    import io

    rgb = (np.arange(60 * 80 * 3) % 251).astype(np.uint8).reshape(60, 80, 3)
    for how in quality_data.EDITS:
        decoded = np.asarray(Image.open(io.BytesIO(quality_data.edit(rgb, how))))
        assert decoded.ndim == 3 and decoded.shape[2] == 3, how
    assert [c.shape[:2] for c in quality_data.crops(rgb, quick=True)] == [(60, 80), (42, 56), (42, 56)]
    assert quality.agreement(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]])) == 0.75
    vectors = np.eye(3) + 0.1
    assert quality.neighbours(vectors, vectors, 1)[:, 0].tolist() == [0, 1, 2]
    assert quality.neighbours(vectors, vectors, 1, exclude_self=True)[0, 0] != 0


def test_the_text_corpus_is_real_english_from_the_standard_library():
    sentences = quality_data.docstring_sentences(50)
    assert len(sentences) == 50 and len(set(sentences)) == 50
    assert all(25 <= len(s) <= 200 for s in sentences)
