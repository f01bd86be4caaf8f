"""Parity checks: a model format is used only if it reproduces the torch model's outputs."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..backends.model_operator import ModelOperator
from ..backends.format_runners import Runner, TorchRunner
from ..errors import FormatError

#: Max relative error (max |candidate - torch| / max |torch|) allowed per precision.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
PARITY_BATCH = 3  # differs from the export batch (2), so the dynamic batch axis is exercised


def relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """max |candidate - reference| / max |reference|."""
    scale = float(np.max(np.abs(reference))) or 1.0
    return float(np.max(np.abs(candidate.astype(np.float64) - reference))) / scale


def check_parity(op: ModelOperator, runner: Runner, precision: str = "fp32",
                 rng: Optional[np.random.Generator] = None) -> float:
    """Run ``runner`` and the torch model on fresh random inputs; raise FormatError if they differ.

    Returns the measured relative error.
    """
    rng = rng or np.random.default_rng()
    inputs = op.example_inputs(PARITY_BATCH, rng)
    reference = TorchRunner(op.torch_module(), "cpu").run(inputs)
    candidate = np.asarray(runner.run(inputs), dtype=np.float32)
    if candidate.shape != reference.shape:
        raise FormatError(f"parity check failed: output shape {candidate.shape}, torch gives "
                          f"{reference.shape}")
    error = relative_error(candidate, reference)
    if not error <= TOLERANCE[precision]:
        raise FormatError(f"parity check failed: relative error {error:.2e} > "
                          f"{TOLERANCE[precision]:g} ({precision})")
    return error
