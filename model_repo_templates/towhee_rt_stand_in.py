# SHIPPED: copied verbatim into the models of user operators as <model>/1/towhee_rt/__init__.py.
# The one shipped module that is towhee_rt: it maps towhee_rt's names to the shipped towhee_ops.
"""Stand-in for towhee_rt inside a served model, written by towhee_rt's repository builder.

The user's operator module beside it (``towhee_ops/user_*.py``) was written against towhee_rt:
``from towhee_rt import Operator, TensorSpec, Param, register``. This package answers those
names from the operator base shipped in ``towhee_ops/``, so the model runs in a tritonserver
whose Python has no towhee_rt; the adapter (``model.py``) makes sure this package, not an
installed towhee_rt, is the one imported. ``register`` only records what the adapter needs:
it finds the operator by the module and name in ``config.pbtxt``, and wraps a registered
function the way towhee_rt does locally (``towhee_ops/function_operator.py``).
"""
import sys

import towhee_ops
from towhee_ops import function_operator as _function_operator_module
from towhee_ops import model_operator, operator_base

# towhee_rt.backends is shipped as towhee_ops: the same module objects under both names, so a
# class imported either way is one class (an OperatorInputError raised by the user's code is
# the one the adapter reports as bad input).
backends = towhee_ops
operator = sys.modules[__name__]  # towhee_rt.operator: the same names
sys.modules[__name__ + ".backends"] = towhee_ops
sys.modules[__name__ + ".backends.operator_base"] = operator_base
sys.modules[__name__ + ".backends.model_operator"] = model_operator
sys.modules[__name__ + ".backends.function_operator"] = _function_operator_module
sys.modules[__name__ + ".operator"] = sys.modules[__name__]

from towhee_ops.model_operator import ModelInput, ModelOperator  # noqa: E402
from towhee_ops.operator_base import (Operator, OperatorInputError,  # noqa: E402
                                      OperatorLimitError, Param, TensorSpec)
from towhee_ops.function_operator import function_operator  # noqa: E402

__all__ = ["Operator", "OperatorInputError", "OperatorLimitError", "Param", "TensorSpec",
           "ModelOperator", "ModelInput", "register"]

#: Registered function name -> (inputs, outputs), as the user's module declared them.
_FUNCTIONS = {}


def register(name, inputs=None, outputs=None):
    """towhee_rt.register as seen by a served model: names a class, records a function."""
    def add(obj):
        if isinstance(obj, type):
            obj.name = name
        else:
            _FUNCTIONS[name] = (list(inputs or ()), list(outputs or ()))
        return obj

    return add


def function_operator_class(fn, name):
    """The operator class of function ``fn``, registered as ``name`` by its module."""
    if name not in _FUNCTIONS:
        raise ImportError("%s: module %s does not register %s() as %r; build the repository "
                          "again" % (name, fn.__module__, fn.__name__, name))
    inputs, outputs = _FUNCTIONS[name]
    return function_operator(fn, name, inputs, outputs)


def __getattr__(name):
    raise AttributeError(
        "towhee_rt.%s is not available inside a served model: its towhee_rt offers only %s. "
        "Keep pipeline code out of the operator's module." % (name, ", ".join(__all__)))
