"""The public operator names: ``from towhee_rt.operator import Operator, Param, TensorSpec``.

They are defined in :mod:`towhee_rt.backends.operator_base`, which ships into every generated
model; inside a served model the stand-in ``towhee_rt`` answers this import path with the
shipped copies. The registry of operator names is :mod:`towhee_rt.registry`.
"""
from __future__ import annotations

from .backends.operator_base import (Operator, OperatorInputError, OperatorLimitError, Param,
                                     TensorSpec)

__all__ = ["Operator", "OperatorInputError", "OperatorLimitError", "Param", "TensorSpec"]
