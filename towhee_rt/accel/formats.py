"""Model formats: choose one per model operator, and write its files into a model directory."""
from __future__ import annotations

import os
from typing import Any, Dict

from ..backends._operator import Operator
from ..op_config import OpConfig

WEIGHTS_FILE = "weights.safetensors"


def select_format(op: Operator, config: OpConfig) -> str:
    """The format ``op`` runs in, from ``config.format_priority`` and ``config.jit``."""
    op.params.setdefault("format", "torch")
    return op.params["format"]


def export_model_files(op: Operator, fmt: str, directory: str) -> Dict[str, Any]:
    """Write ``op``'s model in format ``fmt`` into ``directory``; return the params that load it.

    The torch formats store the state dict (so served weights equal local ones, even when
    they were randomly initialised).
    """
    from safetensors.torch import save_file

    module = op.torch_module()
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(state, os.path.join(directory, WEIGHTS_FILE))
    return {"checkpoint_path": WEIGHTS_FILE, "format": fmt}
