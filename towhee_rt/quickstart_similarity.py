"""The quick start's similarity check: does each photo find itself, and not the others?

:func:`make_variants` writes three variants of every image (JPEG at quality 75, PNG, 3/4 size)
from the pixels the pipeline's own decoder reads; :func:`pictures` groups the files that show
the same picture by their pixels alone (a 16x16 grey thumbnail), so that the model is judged
against a grouping it had no part in; :func:`report` prints the cosines and returns a
:class:`Verdict`: the check is that every variant is nearer its own picture than any other
picture; how many variants keep a cosine of at least :data:`SAME_MIN` (0.99) to their image is
reported beside it. (Measured with EfficientNet-Lite0's ImageNet weights on the 12 shared test
photos: 30 of 36 variants at 0.99-1.00, PNG always 1.000, the lowest JPEG q75 of rocket.jpg
0.94 and of coffee.jpg 0.95; different subjects 0.09-0.27; the same cat rotated by EXIF 0.91.)

On random weights the figures say little (different photos come out nearly as close as one
photo's variants); the quick start prints them with that warning and does not fail on them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import numpy as np

#: A variant's cosine to the image it was made from, at least.
SAME_MIN = 0.99
#: (suffix, what it is): the variants made of each image.
VARIANTS = (("_q75.jpg", "JPEG q75"), (".png", "PNG"), ("_3-4.png", "3/4 size"))
#: Mean absolute difference (0-255) of two 16x16 grey thumbnails below which two files show
#: the same picture (re-encoded, resized, rotated by EXIF: a few levels; other photos: tens).
SAME_PIXELS = 8.0


@dataclasses.dataclass
class Variant:
    """One variant file of ``good[index]``."""

    path: Path
    index: int
    kind: str


def make_variants(decode: Callable[[List[str]], list], files: Sequence[Path],
                  folder: Path) -> Tuple[List[Variant], List[np.ndarray]]:
    """Write :data:`VARIANTS` of each file into ``folder``; also return each file's 16x16
    thumbnail. ``decode`` is the pipeline's decoder (``image_decode.cv2_rgb`` as a function:
    paths -> RGB arrays), so that a variant holds the pixels the pipeline read."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    variants: List[Variant] = []
    thumbs: List[np.ndarray] = []
    for index, (path, rgb) in enumerate(zip(files, decode([str(f) for f in files]))):
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        thumbs.append(thumbnail(rgb))
        stem = f"{index:02d}_{Path(path).stem}"
        smaller = cv2.resize(bgr, (max(1, bgr.shape[1] * 3 // 4), max(1, bgr.shape[0] * 3 // 4)),
                             interpolation=cv2.INTER_AREA)
        for (suffix, kind), image, params in (
                (VARIANTS[0], bgr, [cv2.IMWRITE_JPEG_QUALITY, 75]),
                (VARIANTS[1], bgr, []),
                (VARIANTS[2], smaller, [])):
            target = folder / f"{stem}{suffix}"
            if not cv2.imwrite(str(target), image, params):
                raise OSError(f"could not write {target}")
            variants.append(Variant(target, index, kind))
    return variants, thumbs


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A 16x16 grey float thumbnail of an RGB image (area interpolation)."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)


def pictures(thumbs: Sequence[np.ndarray]) -> List[int]:
    """For each file, the index of the first file showing the same picture (by pixels)."""
    group: List[int] = []
    for i, thumb in enumerate(thumbs):
        group.append(next((group[j] for j in range(i)
                           if np.abs(thumbs[j] - thumb).mean() < SAME_PIXELS), i))
    return group


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclasses.dataclass
class Verdict:
    """What :func:`report` found."""

    same: List[float]           # each variant's cosine to its image
    lowest: str                 # which variant has the lowest
    highest_other: float        # the highest cosine between two different pictures
    misplaced: List[str]        # variants nearer another picture than their own
    pictures: int

    @property
    def ok(self) -> bool:
        """Every variant found its own picture."""
        return bool(self.same) and not self.misplaced

    @property
    def at_least_same_min(self) -> int:
        """How many variants keep a cosine of at least :data:`SAME_MIN` to their image."""
        return sum(c >= SAME_MIN for c in self.same)


def report(files: Sequence[Path], vectors: Sequence[np.ndarray], variants: Sequence[Variant],
           variant_vectors: Sequence[np.ndarray], group: Sequence[int],
           out: Callable[[str], None] = print) -> Verdict:
    """Print the similarity tables of the (served) vectors and return the :class:`Verdict`."""
    images, extra = _unit(np.stack(vectors)), _unit(np.stack(variant_vectors))
    heads = sorted(set(group))
    names = {h: Path(files[h]).stem for h in heads}
    # A variant's nearest picture: the best cosine over the files of each picture.
    near = extra @ images.T
    by_picture = np.stack([near[:, [i for i, g in enumerate(group) if g == h]].max(1)
                           for h in heads], axis=1)
    kinds = [kind for _, kind in VARIANTS]
    out(f"\nsame photo, another encoding or size (cosine to the image; >= {SAME_MIN} "
        f"expected), and the nearest other picture:")
    out(f"  {'file':<26}" + "".join(f"{k:>10}" for k in kinds) + "   nearest other picture")
    same: List[float] = [0.0] * len(variants)
    misplaced: List[str] = []
    for index, path in enumerate(files):
        cells = []
        for kind in kinds:
            (v,) = [k for k, var in enumerate(variants) if var.index == index and var.kind == kind]
            cos = same[v] = float(extra[v] @ images[index])
            best = heads[int(by_picture[v].argmax())]
            if best != group[index]:
                misplaced.append(f"{variants[v].path.name} (nearest: {names[best]})")
            cells.append(f"{cos:10.3f}")
        others = [(float(images[index] @ images[j]), j) for j in range(len(files))
                  if group[j] != group[index]]
        other = max(others) if others else None
        shown = f"{Path(files[other[1]]).name} {other[0]:.3f}" if other else "-"
        out(f"  {Path(path).name:<26}" + "".join(cells) + f"   {shown}")
    highest = -1.0
    if len(heads) > 1:
        out(f"\ndifferent pictures ({len(heads)}; files with the same pixels count as one), "
            f"cosine:")
        width = max(8, min(12, max(len(n) for n in names.values()) + 1))
        out(f"  {'':<12}" + "".join(f"{names[h][:width - 1]:>{width}}" for h in heads))
        for a in heads:
            cells = []
            for b in heads:
                cos = float(images[a] @ images[b])
                if a != b:
                    highest = max(highest, cos)
                cells.append(f"{cos:{width}.3f}")
            out(f"  {names[a][:12]:<12}" + "".join(cells))
    low = int(np.argmin(same))
    return Verdict(same, f"{Path(files[variants[low].index]).name} {variants[low].kind}",
                   highest, misplaced, len(heads))
