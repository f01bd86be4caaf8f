"""Sample photos shipped with towhee_rt, so that examples run from any directory.

``chelsea.jpg`` (a cat) and ``coffee.jpg`` (a cup of espresso) come from scikit-image's sample
data (CC0); ``empty.jpg`` is a zero-byte file, a bad input. Example::

    from towhee_rt import samples
    pipe(samples.path('chelsea.jpg'))
"""
from __future__ import annotations

from pathlib import Path
from typing import List

_HERE = Path(__file__).resolve().parent

__all__ = ["path", "names"]


def names() -> List[str]:
    """The sample files, sorted."""
    return sorted(p.name for p in _HERE.iterdir() if p.suffix in (".jpg", ".png"))


def path(name: str) -> str:
    """The absolute path of sample ``name`` (one of :func:`names`)."""
    if name not in names():
        raise FileNotFoundError(f"no sample named {name!r}; the samples are: "
                                f"{', '.join(names())}")
    return str(_HERE / name)
