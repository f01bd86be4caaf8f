# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""A plain function as an operator: the class ``towhee_rt.register`` generates for it.

The contract of such a function (``register('text.lower', inputs=[...], outputs=[...])(fn)``):

* ``fn`` is called once per item, with one positional argument per declared input, in order.
  A ``bytes`` input arrives as ``bytes`` (a ``str`` given to a local pipeline is UTF-8 encoded
  first, as the client does when it sends one); an array input arrives as a numpy array of the
  declared dtype (0-d for ``shape=()``).
* It returns the value of its one output, or a tuple with one value per declared output, in
  order. A ``bytes`` output may be ``str`` (UTF-8 encoded) or ``bytes``; an array output is
  anything ``numpy.asarray`` takes, converted to the declared dtype, with its number of
  dimensions and its fixed sizes checked.
* Its keyword-only arguments (after ``*``) are the operator's params, typed by their JSON
  defaults (bool, int, float, str, list, dict or None: any JSON value); one without a default
  is a required param.
* It raises ``towhee_rt.OperatorInputError`` for an input it cannot process (reported as a bad
  input, ``OperatorLimitError`` for one over a limit); any other exception is reported as the
  operator breaking. It should be pure: when one item of a batch fails, the others are run
  again one by one.

Like every backend module it ships into each served model (``towhee_ops/function_operator.py``),
where the stand-in ``towhee_rt`` of a user's operator wraps a registered function with it, so a
function runs the same way locally and served.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Dict, List, Sequence, Tuple

import numpy as np

from .operator_base import REQUIRED, Operator, OperatorInputError, Param, TensorSpec

#: A keyword-only default's type -> the JSON types its param takes.
_PARAM_TYPES = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list,),
                dict: (dict,)}
_ANY_JSON = (bool, int, float, str, list, dict)


class FunctionOperator(Operator):
    """Base of the operators generated for registered functions (see the module docstring)."""

    #: The user's function (a staticmethod on each generated class) and its params' names.
    function: ClassVar[Callable[..., Any]]
    _param_names: ClassVar[Tuple[str, ...]] = ()

    def process_batch(self, batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        fn = type(self).function
        kwargs = {name: self.params[name] for name in self._param_names}
        columns: Dict[str, List[Any]] = {spec.name: [] for spec in self.outputs}
        for values in zip(*(batch[spec.name] for spec in self.inputs)):
            args = [_as_input(value, spec) for value, spec in zip(values, self.inputs)]
            result = fn(*args, **kwargs)
            results = (result,) if len(self.outputs) == 1 else _as_tuple(result, self)
            for value, spec in zip(results, self.outputs):
                columns[spec.name].append(_as_output(value, spec, self.name))
        return columns


def function_operator(fn: Callable[..., Any], name: str, inputs: Sequence[TensorSpec],
                      outputs: Sequence[TensorSpec]) -> type:
    """The operator class of ``fn`` registered as ``name`` (one generated per function).

    It carries ``fn``'s module and qualified name, which is where a served model finds the
    function again. Raises ``TypeError`` when ``fn``'s signature does not fit the contract.
    """
    params = function_params(fn, name)
    positional = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != len(inputs):
        raise TypeError(
            f"{name}: {fn.__name__}() takes {len(positional)} positional argument(s) but the "
            f"operator declares {len(inputs)} input(s) "
            f"({', '.join(s.name for s in inputs) or 'none'}); the function gets one "
            f"positional argument per input, and its keyword-only arguments (after *) are the "
            f"operator's params")
    body = {"__module__": fn.__module__, "__qualname__": fn.__qualname__,
            "__doc__": fn.__doc__, "name": name, "inputs": list(inputs),
            "outputs": list(outputs), "function": staticmethod(fn),
            "params_spec": Operator.params_spec + params,
            "_param_names": tuple(p.name for p in params)}
    return type(fn.__name__, (FunctionOperator,), body)


def function_params(fn: Callable[..., Any], name: str = "") -> Tuple[Param, ...]:
    """The params of ``fn``: its keyword-only arguments, typed by their defaults."""
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{name}: {fn.__name__}() takes *{p.name}; a registered function "
                            f"takes one positional argument per input and keyword-only params "
                            f"with defaults, nothing variable")
        if p.kind != p.KEYWORD_ONLY:
            continue
        if p.default is p.empty:
            params.append(Param(p.name, _ANY_JSON, REQUIRED, "required"))
        elif p.default is None:
            params.append(Param(p.name, _ANY_JSON, None))
        elif type(p.default) in _PARAM_TYPES:
            params.append(Param(p.name, _PARAM_TYPES[type(p.default)], p.default))
        else:
            raise TypeError(f"{name}: the default of param {p.name!r} is "
                            f"{type(p.default).__name__}, not JSON; params are stored as JSON "
                            f"in the Triton model config: use bool, int, float, str, list, dict "
                            f"or None (e.g. a path instead of an object)")
    return tuple(params)


def _as_input(value: Any, spec: TensorSpec) -> Any:
    if spec.dtype == "bytes":
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
            return bytes(value)
        if isinstance(value, np.ndarray) and value.size == 1:  # one string in an array
            return _as_input(value.reshape(-1)[0], spec)
        raise OperatorInputError(f"input {spec.name!r}: expected str or bytes, got "
                                 f"{type(value).__name__}")
    try:
        return np.asarray(value, dtype=spec.dtype)
    except (TypeError, ValueError) as exc:
        raise OperatorInputError(f"input {spec.name!r}: expected an array of {spec.dtype}, "
                                 f"got {type(value).__name__} ({exc})") from None


def _as_tuple(result: Any, op: Operator) -> Tuple[Any, ...]:
    if not isinstance(result, (tuple, list)) or len(result) != len(op.outputs):
        raise TypeError(f"{op.name}: the function must return a tuple of {len(op.outputs)} "
                        f"values ({', '.join(s.name for s in op.outputs)}), got "
                        f"{type(result).__name__}")
    return tuple(result)


def _as_output(value: Any, spec: TensorSpec, where: str) -> Any:
    if spec.dtype == "bytes":
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, (bytes, bytearray, np.bytes_)):
            return bytes(value)
        raise TypeError(f"{where}: output {spec.name!r} must be str or bytes, got "
                        f"{type(value).__name__}")
    array = np.asarray(value, dtype=spec.dtype)
    if array.ndim != len(spec.shape) or any(
            d >= 0 and d != n for d, n in zip(spec.shape, array.shape)):
        raise TypeError(f"{where}: output {spec.name!r} must have shape "
                        f"{tuple(spec.shape)} (-1: any size), got {array.shape}")
    return array
