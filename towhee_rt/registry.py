"""``towhee_rt.register``: the user's own operators, by name, beside the built-in ones.

Example (in a module of its own, e.g. ``my_ops.py``, so that it can be served)::

    from towhee_rt import Operator, TensorSpec, register

    @register('my_text.shout')
    class Shout(Operator):
        inputs = [TensorSpec('text', 'bytes')]
        outputs = [TensorSpec('text', 'bytes')]

        def process_batch(self, batch):
            return {'text': [t.upper() for t in batch['text']]}

    @register('my_text.lower', inputs=[TensorSpec('text', 'bytes')],
              outputs=[TensorSpec('text', 'bytes')])
    def lower(text):          # one item's inputs -> its outputs (towhee_rt.function_operator)
        return text.lower()

Then ``dummy_input().my_text.shout()`` and ``dc([...]).my_text.lower()`` work like built-in
operators, locally and served (``build_model_repo`` ships the module: towhee_rt.shipping).
"""
from __future__ import annotations

import inspect
import json
import re
from typing import Any, Callable, Optional, Sequence, TypeVar

from .backends.operator_base import REQUIRED, Operator, TensorSpec
from .errors import ConfigError
from .function_operator import function_operator
from .operator import add_user_operator

T = TypeVar("T")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\.[A-Za-z][A-Za-z0-9_]*$")
_JSON_TYPES = (bool, int, float, str, list, dict, type(None))


def register(name: str, *, inputs: Optional[Sequence[TensorSpec]] = None,
             outputs: Optional[Sequence[TensorSpec]] = None) -> Callable[[T], T]:
    """Register an operator as ``name`` (``'namespace.operator'``); use as a decorator.

    On an :class:`~towhee_rt.Operator` subclass (or :class:`~towhee_rt.ModelOperator`), which
    declares its ``inputs``, ``outputs`` and ``params_spec``: sets its ``name`` and returns it.
    On a plain function, with ``inputs=`` and ``outputs=``: generates an operator class for it
    (the function's contract: :mod:`towhee_rt.function_operator`) and returns the function
    unchanged. Raises :class:`~towhee_rt.ConfigError` for a name that is taken or malformed, a
    class without inputs or outputs, or params whose defaults are not JSON.
    """
    _check_name(name)

    def add(obj: T) -> T:
        if isinstance(obj, type):
            if inputs is not None or outputs is not None:
                raise ConfigError(f"{name}: inputs= and outputs= are for registering a "
                                  f"function; declare them on the class {obj.__name__} "
                                  f"(inputs = [TensorSpec(...)], outputs = [...])")
            _check_class(name, obj)
            add_user_operator(name, obj)  # first: a refused class is left as it was
            obj.name = name
            return obj
        if inspect.isfunction(obj):
            add_user_operator(name, _function_class(name, obj, inputs, outputs))
            return obj
        raise ConfigError(f"{name}: register() takes an Operator subclass or a plain function, "
                          f"got {type(obj).__name__}")

    return add


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"operator name {name!r} must be 'namespace.operator', two "
                          f"identifiers joined by one dot, each starting with a letter "
                          f"(e.g. 'my_text.lower')")
    namespace = name.split(".", 1)[0]
    taken = _builder_attributes()
    if namespace in taken:
        raise ConfigError(f"operator namespace {namespace!r} is the name of a pipeline method "
                          f"(dummy_input().{namespace}, dc(...).{namespace}); choose another "
                          f"namespace for {name!r}")


def _builder_attributes() -> set:
    # Imported here: the pipeline modules import the operator registry this module fills.
    from .datacollection import DataCollection
    from .pipeline import PipelineBuilder

    return {a for cls in (PipelineBuilder, DataCollection) for a in dir(cls)
            if not a.startswith("_")}


def _check_class(name: str, cls: type) -> None:
    if not issubclass(cls, Operator):
        raise ConfigError(f"{name}: {cls.__name__} is not an operator; subclass "
                          f"towhee_rt.Operator (or towhee_rt.ModelOperator for a neural model), "
                          f"or register a plain function with inputs= and outputs=")
    declared = cls.__dict__.get("name") or ""
    if declared and declared != name:
        raise ConfigError(f"{name}: class {cls.__name__} declares name = {declared!r}; drop it "
                          f"(register sets it) or register it as {declared!r}")
    _check_specs(name, "inputs", cls.inputs, f"declare them on the class: inputs = "
                                            f"[TensorSpec('text', 'bytes')]")
    _check_specs(name, "outputs", cls.outputs, f"declare them on the class: outputs = "
                                              f"[TensorSpec('embedding', 'float32', (-1,))]")
    if cls.process_batch is Operator.process_batch:
        raise ConfigError(f"{name}: {cls.__name__} does not implement process_batch(batch), "
                          f"which maps {{input name: items}} to {{output name: items}}")
    _check_params(name, cls)


def _check_params(name: str, cls: type) -> None:
    """Params travel as JSON in config.pbtxt: their types and defaults must be JSON."""
    for param in cls.params_spec:
        if param.internal:
            continue
        bad_types = [t.__name__ for t in param.types if t not in _JSON_TYPES]
        if bad_types:
            raise ConfigError(f"{name}: param {param.name!r} takes {', '.join(bad_types)}, "
                              f"which is not JSON; params are stored as JSON in the Triton "
                              f"model config: take bool, int, float, str, list, dict or None "
                              f"(e.g. a file path instead of an object)")
        if param.default is not REQUIRED:
            try:
                json.dumps(param.default)
            except (TypeError, ValueError):
                raise ConfigError(f"{name}: the default of param {param.name!r} "
                                  f"({param.default!r}) is not JSON; params are stored as JSON "
                                  f"in the Triton model config: use bool, int, float, str, "
                                  f"list, dict or None") from None


def _check_specs(name: str, what: str, specs: Any, hint: str) -> None:
    if not specs:
        raise ConfigError(f"{name}: the operator declares no {what}; {hint}")
    if not all(isinstance(s, TensorSpec) for s in specs):
        raise ConfigError(f"{name}: {what} must be a list of towhee_rt.TensorSpec, got "
                          f"{specs!r}")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{name}: {what} have duplicate names {names}; name each one once")


def _function_class(name: str, fn: Callable[..., Any], inputs: Any, outputs: Any) -> type:
    hint = ("pass them to register: register(name, inputs=[TensorSpec('text', 'bytes')], "
            "outputs=[TensorSpec('text', 'bytes')])")
    _check_specs(name, "inputs", inputs, hint)
    _check_specs(name, "outputs", outputs, hint)
    try:
        cls = function_operator(fn, name, list(inputs), list(outputs))
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    _check_params(name, cls)
    return cls
