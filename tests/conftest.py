"""Shared fixtures: the shared test images and the expected decoded shapes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOWHEE_RT_SHARED", REPO_ROOT.parent / "shared"))
IMAGES = SHARED / "testdata" / "images"

#: good/ file -> decoded (H, W, 3), from shared/testdata/README.md
GOOD_SHAPES = {
    "astronaut.jpg": (512, 512, 3),
    "chelsea.jpg": (300, 451, 3),
    "coffee.jpg": (400, 600, 3),
    "rocket.jpg": (427, 640, 3),
    "coffee_1920x1280.jpg": (1280, 1920, 3),
    "chelsea_progressive.jpg": (300, 451, 3),
    "chelsea_exif_rot90.jpg": (451, 300, 3),
    "astronaut_cmyk.jpg": (512, 512, 3),
    "camera_gray.jpg": (512, 512, 3),
    "camera_gray.png": (512, 512, 3),
    "chelsea_rgba.png": (300, 451, 3),
    "rocket.webp": (427, 640, 3),
}
BAD_FILES = ["empty.jpg", "not_an_image.jpg", "truncated.jpg", "corrupted_scan.jpg",
             "bomb_50000x50000.png"]

#: Sentences to calibrate int8 text models with, short ones included (they are the hardest).
CALIBRATION_SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "A monkey is playing drums.",
    "Two men pushed carts through the woods.", "Paris is the capital of France.",
    "Someone in a gorilla costume is playing a set of drums.", "How do I reset my password?",
    "Embeddings map text to vectors so that similar meanings are close.",
    "The quick brown fox jumps over the lazy dog.", "OK.", "No way!", "Thanks",
]


@pytest.fixture(scope="session")
def good_dir() -> Path:
    path = IMAGES / "good"
    if not path.is_dir():
        pytest.fail(f"shared test images not found at {path}; set TOWHEE_RT_SHARED")
    return path


@pytest.fixture(scope="session")
def bad_dir() -> Path:
    return IMAGES / "bad"


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    """A Hugging Face hub cache holding tiny models (tests/hub_cache.py): ``(path, commits)``."""
    from .hub_cache import write_hub_cache

    path = tmp_path_factory.mktemp("hf") / "hub"
    return path, write_hub_cache(path)


@pytest.fixture(scope="session")
def pretrained_build(hub_cache, tmp_path_factory):
    """tests/pretrained_cases.py ``build`` run offline on a copy of :func:`hub_cache`: its JSON
    result, plus ``hub`` (the copy, which the served test removes) and the commits."""
    import shutil

    from .hub_cache import run_offline

    root = tmp_path_factory.mktemp("pretrained")
    hub = root / "hub"
    shutil.copytree(hub_cache[0], hub, symlinks=True)
    result = run_offline(["tests.pretrained_cases", "build", str(root / "out")], hub,
                         root / "towhee_rt_cache")
    return {**result, "hub": str(hub), "commits": hub_cache[1]}
