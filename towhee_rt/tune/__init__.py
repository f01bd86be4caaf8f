"""``python -m towhee_rt.tune REPO`` (also ``towhee-rt tune REPO``) and :func:`tune`: search a
served pipeline's settings on the real embedded server and write the best ones back.

Modules, one job each: :mod:`.space` (the knobs, read from and written into configs),
:mod:`.window` (stable measurement windows), :mod:`.search` (hill-climbing under an objective),
:mod:`.session` (the scratch server: apply a point, send load), :mod:`.evaluator` (measuring
points within the deadline), :mod:`.inputs` (what is sent), :mod:`.machine` (machine and
noise), :mod:`.report` (table, JSON, plot), :mod:`.tuner` (:func:`tune`) and :mod:`.cli` (the
command line).
"""
from .tuner import DEFAULT_TIME_BUDGET_S, TuneResult, tune

__all__ = ["tune", "TuneResult", "DEFAULT_TIME_BUDGET_S"]
