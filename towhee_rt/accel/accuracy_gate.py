"""The accuracy gate of lossy formats (int8): by per-item cosine, or by retrieval neighbours.

``pipeline_config(accuracy_gate=...)`` (or ``op_config``) chooses how a quantized model is
judged against the fp32 one on the user's samples (``calibration_data``; every third one is
held out and never calibrates):

* ``{'metric': 'min_cosine', 'min': 0.99}`` (the default, and what ``int8_min_cosine`` sets):
  every held-out output keeps at least ``min`` cosine similarity to fp32's.
* ``{'metric': 'topk_agreement', 'k': 5, 'min': 0.9, 'min_cosine': 0.96}``: search results
  hold. Each held-out output (and its mirror image, for images) is a query against all the other
  outputs (calibration and held-out items and their mirror images); ``min`` is the least mean
  share of its ``k`` nearest neighbours under the quantized model that fp32 also returns, and
  ``min_cosine`` a floor on every held-out item's cosine to fp32 (on a pool of a few dozen items
  neighbour agreement alone let a badly calibrated model through).

Thresholds (docs/formats.md), measured on EfficientNet-Lite0's ImageNet weights with the 12
shared test photos (4 held out; 24 items with mirror images): the static uint8 recipe scores
top-5 0.925 / min cosine 0.972 and serves search results close to fp32's; the same recipe
calibrated on noise 0.900 / 0.952, on a blank image 0.700 / 0.233, and with the 'same'-padding
arithmetic quantized 0.750 / 0.899.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import ConfigError

METRICS = ("min_cosine", "topk_agreement")
KEYS = ("metric", "k", "min", "min_cosine")
DEFAULT_K = 5
DEFAULT_MIN = {"min_cosine": 0.99, "topk_agreement": 0.9}
#: The topk_agreement gate's default floor on per-item cosine.
DEFAULT_COSINE_FLOOR = 0.96


@dataclasses.dataclass(frozen=True)
class AccuracyGate:
    """How a lossy format is judged: ``metric`` (see the module docstring), ``min`` and ``k``."""

    metric: str = "min_cosine"
    min: float = 0.99
    k: int = DEFAULT_K
    #: topk_agreement: the least cosine to fp32 of every held-out item.
    min_cosine: Optional[float] = None

    def describe(self) -> str:
        """E.g. ``top-5 neighbour agreement with fp32 >= 0.9 and min cosine >= 0.96``."""
        if self.metric == "topk_agreement":
            floor = f" and min cosine >= {self.min_cosine}" if self.min_cosine else ""
            return f"top-{self.k} neighbour agreement with fp32 >= {self.min}{floor}"
        return f"min cosine to fp32 >= {self.min}"


def parse(value: Any, where: str) -> Optional[AccuracyGate]:
    """Validate an ``accuracy_gate`` config value (``None`` or a dict); :class:`ConfigError`
    naming what is wrong."""
    if value is None:
        return None
    if isinstance(value, AccuracyGate):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a dict such as {{'metric': 'topk_agreement', 'k': 5, "
                          f"'min': 0.9}} or {{'metric': 'min_cosine', 'min': 0.99}}, got "
                          f"{value!r}")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys "
                          f"are: {', '.join(KEYS)}")
    metric = value.get("metric", "min_cosine")
    if metric not in METRICS:
        raise ConfigError(f"{where}['metric'] must be one of {', '.join(map(repr, METRICS))}, "
                          f"got {metric!r}")
    threshold = value.get("min", DEFAULT_MIN[metric])
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
            not 0 < threshold <= 1:
        raise ConfigError(f"{where}['min'] must be a number in (0, 1], got {threshold!r}")
    k = value.get("k", DEFAULT_K)
    if metric != "topk_agreement" and "k" in value:
        raise ConfigError(f"{where}['k'] applies to metric 'topk_agreement' only; remove it or "
                          f"set 'metric': 'topk_agreement'")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{where}['k'] must be a positive integer, got {k!r}")
    if metric != "topk_agreement" and "min_cosine" in value:
        raise ConfigError(f"{where}['min_cosine'] is the cosine floor of metric "
                          f"'topk_agreement'; with metric 'min_cosine' set 'min'")
    floor = value.get("min_cosine", DEFAULT_COSINE_FLOOR) if metric == "topk_agreement" \
        else None
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float))
                              or not 0 < floor <= 1):
        raise ConfigError(f"{where}['min_cosine'] must be a number in (0, 1] or None, got "
                          f"{floor!r}")
    return AccuracyGate(metric, float(threshold), k, None if floor is None else float(floor))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` arrays."""
    return (_unit(a) * _unit(b)).sum(1)


def neighbours(pool: np.ndarray, queries: Sequence[int], k: int) -> np.ndarray:
    """For each row index in ``queries``, the indices of its ``k`` most similar other rows of
    ``pool`` (cosine; itself excluded; ties broken by index)."""
    unit = _unit(pool)
    sims = unit[list(queries)] @ unit.T
    sims[np.arange(len(queries)), list(queries)] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def topk_agreement(candidate: np.ndarray, reference: np.ndarray, queries: Sequence[int],
                   k: int) -> float:
    """Mean over ``queries`` (row indices) of the share of the query's ``k`` nearest other rows
    under ``candidate`` that ``reference`` also has among its ``k`` nearest (``k`` is capped at
    the pool size minus one)."""
    k = min(k, len(reference) - 1)
    if k < 1 or not len(queries):
        raise ValueError("topk_agreement needs at least 2 items and 1 query")
    a, b = neighbours(candidate, queries, k), neighbours(reference, queries, k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The gate's figures on the held-out items and whether it passed."""

    gate: AccuracyGate
    passed: bool
    min_cosine: float
    agreement: Optional[float] = None
    #: Held-out queries and items in the neighbour pool (topk_agreement).
    queries: int = 0
    pool: int = 0

    def text(self) -> str:
        """E.g. ``passed: top-5 neighbour agreement with fp32 0.925 (>= 0.9), min cosine 0.9720
        (>= 0.96) on 8 held-out queries among 24 items``."""
        word = "passed" if self.passed else "refused"
        if self.gate.metric == "topk_agreement":
            floor = self.gate.min_cosine
            return (f"{word}: top-{self.gate.k} neighbour agreement with fp32 "
                    f"{self.agreement:.3f} ({'>=' if self.agreement >= self.gate.min else '<'} "
                    f"{self.gate.min}), min cosine {self.min_cosine:.4f}"
                    + (f" ({'>=' if self.min_cosine >= floor else '<'} {floor})" if floor
                       else "") + f" on {self.queries} held-out queries among {self.pool} items")
        return (f"{word}: min cosine to fp32 {self.min_cosine:.4f} "
                f"{'>=' if self.passed else '<'} {self.gate.min} on {self.queries} held-out "
                f"items")


def judge(gate: AccuracyGate, candidate: List[np.ndarray], reference: List[np.ndarray],
          held_out: Sequence[int]) -> Verdict:
    """Judge ``candidate`` outputs against ``reference`` ones (one 2-D array per sample, the
    same order); ``held_out``: indices of the held-out samples (their rows are the queries)."""
    rows = np.cumsum([0] + [len(x) for x in reference])
    queries = [r for i in held_out for r in range(rows[i], rows[i + 1])]
    a, b = np.concatenate(candidate), np.concatenate(reference)
    worst = float(cosines(a[queries], b[queries]).min())
    if gate.metric == "topk_agreement":
        agreement = topk_agreement(a, b, queries, gate.k)
        passed = agreement >= gate.min and (gate.min_cosine is None or worst >= gate.min_cosine)
        return Verdict(gate, passed, worst, agreement, len(queries), len(b))
    return Verdict(gate, worst >= gate.min, worst, None, len(queries), len(b))
