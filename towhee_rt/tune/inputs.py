"""What the tuner sends: the user's inputs (``--inputs``), or, by default, representative
items.

By default an image pipeline gets the shipped sample photos (:data:`SAMPLE_PHOTOS`, real
camera JPEGs: decode and resize cost what a user's would; the pipeline's warm-up image is a
tiny 64x64 one, too cheap to tune on), a text pipeline a built-in set of sentences of varied
length (:data:`SAMPLE_SENTENCES`: one warm-up string would tune for one length), any other
pipeline its first operator's warm-up items (``Operator.warmup_items()``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence, Tuple

import numpy as np

from ..errors import ConfigError

#: At most this many items are read from ``--inputs`` (they are sent round and round).
MAX_ITEMS = 64
#: A text file is read up to this size; an image file above it is refused.
MAX_FILE_BYTES = 16 * 1024 * 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
#: Sizes (width, height) of the generated photos: what phones and web pages commonly send.
PHOTO_SIZES = ((500, 400), (480, 360), (640, 427), (400, 500))
#: The shipped sample photos (:func:`towhee_rt.samples.path`) an image pipeline is tuned on.
SAMPLE_PHOTOS = ("chelsea.jpg", "coffee.jpg")
#: What a text pipeline is tuned on by default: sentences from 2 to about 60 words.
SAMPLE_SENTENCES = (
    "Hello world.",
    "A cat sleeps on the warm windowsill.",
    "How do I reset my password if I no longer have access to the email on my account?",
    "The quarterly report shows revenue grew by twelve percent, driven mostly by new "
    "customers in Europe, while costs stayed flat.",
    "Machine learning models are often trained on large datasets, then evaluated on held-out "
    "examples to estimate how well they generalise to data they have not seen before, which "
    "matters because a model that only memorises its training set is of little use.",
    "Best pizza near me open now",
    "The old lighthouse keeper climbed the spiral stairs every evening, lit the great lamp, "
    "and watched the ships pass safely through the narrow channel between the rocks, as his "
    "father and grandfather had done before him for more than sixty years, until the day the "
    "automatic beacon arrived by boat and the keeper, a little sadly, handed over the keys.",
    "Refund not received after 14 days.",
)


def default_inputs(input_kind: str, first_operator: str, params: dict) -> Tuple[List[Any], str]:
    """(items, what they are) for a pipeline whose ensemble input is ``input_kind`` and whose
    first step runs ``first_operator`` with ``params``."""
    if input_kind == "image":
        from .. import samples

        photos = [Path(samples.path(name)).read_bytes() for name in SAMPLE_PHOTOS]
        return photos, f"the sample photos {', '.join(SAMPLE_PHOTOS)} (towhee_rt.samples)"
    if input_kind == "text":
        words = sorted(len(s.split()) for s in SAMPLE_SENTENCES)
        return list(SAMPLE_SENTENCES), (f"{len(SAMPLE_SENTENCES)} built-in sentences of "
                                        f"{words[0]}-{words[-1]} words")
    from ..registry import operator_class

    try:
        operator = operator_class(first_operator)(**params)
        items = [item[0] for item in operator.warmup_items()]
    except Exception as exc:  # noqa: BLE001 - any failure means: ask for inputs
        raise ConfigError(f"cannot make sample inputs from operator {first_operator!r} "
                          f"({type(exc).__name__}: {exc}); pass some with --inputs "
                          "DIR_OR_FILES (inputs=[...])") from None
    if input_kind == "text":
        items = [i.decode("utf-8", "replace") if isinstance(i, bytes) else i for i in items]
    return items, f"{len(items)} warm-up item(s) of operator {first_operator}"


def generated_photos(sizes: Sequence[Tuple[int, int]] = PHOTO_SIZES, seed: int = 0
                     ) -> List[bytes]:
    """JPEG bytes of photo-like images (colour gradients plus noise), one per size."""
    import cv2

    rng = np.random.default_rng(seed)
    photos = []
    for width, height in sizes:
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        base = np.dstack([x / width * 255, y / height * 255,
                          (np.sin(x / 23.0) * np.cos(y / 17.0) + 1) * 127])
        noisy = base + rng.normal(0, 18, size=base.shape)
        ok, encoded = cv2.imencode(".jpg", np.clip(noisy, 0, 255).astype(np.uint8),
                                   [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise ConfigError("OpenCV could not encode a sample JPEG; pass --inputs")
        photos.append(encoded.tobytes())
    return photos


def read_inputs(paths: Sequence[str], input_kind: str, flag: str = "--inputs"
                ) -> Tuple[List[Any], str]:
    """(items, what they are) from files and directories: image files as bytes for an image
    pipeline, the lines of text files for a text one; at most :data:`MAX_ITEMS`. ``flag``:
    how errors name the option."""
    files: List[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{flag} {given}: no such file or directory")
    items: List[Any] = []
    for path in files:
        if len(items) >= MAX_ITEMS:
            break
        if input_kind == "image":
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append(_read_bounded(path, whole=True, flag=flag))
        elif input_kind == "text":
            items += _lines(path, flag)[:MAX_ITEMS - len(items)]
    if not items:
        wanted = ("image files (" + ", ".join(IMAGE_SUFFIXES) + ")" if input_kind == "image"
                  else "text files with one input per line")
        raise ConfigError(f"{flag} {' '.join(map(str, paths))}: found no {wanted} for this "
                          f"{input_kind or 'unknown'} pipeline")
    return items, f"{len(items)} item(s) from {', '.join(map(str, paths))}"


def _read_bounded(path: Path, whole: bool, flag: str = "--inputs") -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if whole and len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{flag}: {path} is larger than {MAX_FILE_BYTES // 2**20} MiB; "
                          "give smaller files")
    return data[:MAX_FILE_BYTES]


def _lines(path: Path, flag: str = "--inputs") -> List[str]:
    text = _read_bounded(path, whole=False, flag=flag).decode("utf-8", "replace")
    return [line.strip() for line in text.splitlines() if line.strip()]
