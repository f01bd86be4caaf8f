"""The data of the quality suite (:mod:`bench.quality`): real photos that ship offline, the
gallery crops and edited queries of its retrieval task, and real English sentences from the
standard library's docstrings. No model here: only what is embedded.
"""
from __future__ import annotations

import importlib
import inspect
import io
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

SHARED_PHOTOS = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg", "camera_gray.jpg"]
SKIMAGE_PHOTOS = ["motorcycle_left.png", "hubble_deep_field.jpg", "immunohistochemistry.png"]
EDITS = ["flip", "rotate7", "bright1.3", "crop85", "down0.5", "jpeg30"]


def photos(quick: bool = False) -> Dict[str, np.ndarray]:
    """name -> RGB uint8 of the real photos available offline."""
    from PIL import Image

    from .common import image_files

    good = image_files()[0].parent
    out = {n: np.asarray(Image.open(good / n).convert("RGB")) for n in SHARED_PHOTOS
           if (good / n).exists()}
    try:
        from sklearn.datasets import load_sample_image

        for name in ("china.jpg", "flower.jpg"):
            out[name] = load_sample_image(name)
    except Exception:  # noqa: BLE001 - scikit-learn is optional
        pass
    try:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            out["grace_hopper.jpg"] = np.asarray(Image.open(f).convert("RGB"))
    except Exception:  # noqa: BLE001
        pass
    try:
        import skimage.data

        folder = Path(skimage.data.__file__).parent
        for name in SKIMAGE_PHOTOS:
            if (folder / name).exists():
                out[name] = np.asarray(Image.open(folder / name).convert("RGB"))
    except Exception:  # noqa: BLE001 - scikit-image is optional
        pass
    if quick:
        out = dict(list(out.items())[:5])
    return out


def crops(rgb: np.ndarray, quick: bool) -> List[np.ndarray]:
    """The gallery crops of one photo: the whole, four corner crops of 70%, a centre 55%."""
    h, w = rgb.shape[:2]
    out = [rgb]
    ch, cw = int(h * 0.7), int(w * 0.7)
    for y, x in ((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)):
        out.append(rgb[y:y + ch, x:x + cw])
    sh, sw = int(h * 0.55), int(w * 0.55)
    out.append(rgb[(h - sh) // 2:(h - sh) // 2 + sh, (w - sw) // 2:(w - sw) // 2 + sw])
    return out[:3] if quick else out


def jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def edit(rgb: np.ndarray, how: str) -> bytes:
    """A query: ``rgb`` after one realistic edit, JPEG-encoded."""
    from PIL import Image, ImageEnhance

    img = Image.fromarray(np.ascontiguousarray(rgb))
    if how == "flip":
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    elif how == "rotate7":
        img = img.rotate(7, resample=Image.BILINEAR, expand=False)
    elif how == "bright1.3":
        img = ImageEnhance.Brightness(img).enhance(1.3)
    elif how == "crop85":
        w, h = img.size
        img = img.crop((int(w * .075), int(h * .075), int(w * .925), int(h * .925)))
    elif how == "down0.5":
        img = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.BILINEAR)
    return jpeg(np.asarray(img), 30 if how == "jpeg30" else 95)


def retrieval_set(quick: bool) -> Tuple[List[bytes], List[bytes], np.ndarray, List[str]]:
    """Gallery items, queries, each query's relevant gallery index, and the photo names."""
    gallery, queries, relevant = [], [], []
    pics = photos(quick)
    edits = EDITS[::2] if quick else EDITS
    for rgb in pics.values():
        for crop in crops(rgb, quick):
            index = len(gallery)
            gallery.append(jpeg(crop))
            for how in edits:
                queries.append(edit(crop, how))
                relevant.append(index)
    return gallery, queries, np.asarray(relevant), list(pics)


def docstring_sentences(limit: int) -> List[str]:
    """First sentences of the standard library's docstrings (deduplicated, 25-200 chars)."""
    modules = ["os", "os.path", "json", "re", "collections", "itertools", "functools",
               "pathlib", "subprocess", "socket", "csv", "logging", "argparse", "datetime",
               "decimal", "fractions", "statistics", "random", "string", "textwrap",
               "threading", "shutil", "tempfile", "zipfile", "tarfile", "gzip", "hashlib",
               "base64", "urllib.parse", "http.client", "email.message", "sqlite3",
               "heapq", "bisect", "math", "contextlib", "inspect", "ast", "dis", "pickle",
               "copy", "pprint", "difflib", "unittest", "uuid", "glob", "fnmatch", "time",
               "calendar", "queue", "asyncio", "concurrent.futures", "operator", "struct"]
    seen, out = set(), []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if not doc:
                continue
            first = " ".join(doc.split("\n\n")[0].split())
            if 25 <= len(first) <= 200 and first not in seen and not first.startswith(
                    ("Return", "Same as")) or (first.startswith("Return") and 40 <= len(first)
                                                <= 200 and first not in seen):
                seen.add(first)
                out.append(first)
    rng = np.random.default_rng(0)
    rng.shuffle(out)
    return out[:limit]
