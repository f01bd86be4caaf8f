"""The registry of operator names: the built-in ones and the user's own (:func:`register`).

A name is ``'namespace.operator'``; ``dummy_input().<namespace>.<operator>(...)`` and
``dc(...).<namespace>.<operator>(...)`` look it up here (:func:`operator_class`,
:func:`namespaces`). Built-in names map to classes in ``towhee_rt.backends``, imported when
first asked for; the user's names map to the classes they registered.

Registering your own, in a module of its own (e.g. ``my_ops.py``, so that it can be served)::

    from towhee_rt import Operator, TensorSpec, register

    @register('my_text.shout')
    class Shout(Operator):
        inputs = [TensorSpec('text', 'bytes')]
        outputs = [TensorSpec('text', 'bytes')]

        def process_batch(self, batch):
            return {'text': [t.upper() for t in batch['text']]}

    @register('my_text.lower', inputs=[TensorSpec('text', 'bytes')],
              outputs=[TensorSpec('text', 'bytes')])
    def lower(text):          # one item's inputs -> its outputs (backends/function_operator.py)
        return text.lower()

Then ``dummy_input().my_text.shout()`` and ``dc([...]).my_text.lower()`` work like built-in
operators, locally and served (``build_model_repo`` ships the module: towhee_rt.shipping).
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Type, TypeVar

from .backends.function_operator import FunctionOperator, function_operator
from .backends.operator_base import REQUIRED, Operator, TensorSpec
from .errors import ConfigError

#: Built-in operator name -> (its module in ``towhee_rt.backends``, class name).
BUILTIN_OPERATORS: Dict[str, Tuple[str, str]] = {
    "image_decode.cv2_rgb": ("image_decode", "CV2RGBDecode"),
    "image_decode.nvjpeg": ("image_decode_gpu", "NvJpegDecode"),
    "image_decode.dali": ("image_decode_gpu", "DaliDecode"),
    "image_embedding.timm": ("image_embedding", "TimmImageEmbedding"),
    "image_text_embedding.clip_image": ("clip", "ClipImageEmbedding"),
    "image_text_embedding.clip_text": ("clip", "ClipTextEmbedding"),
    "text_embedding.sentence_transformers": ("text_embedding", "SentenceTransformerEmbedding"),
    "text_embedding.transformers": ("transformers_embedding", "TransformersEmbedding"),
}
#: Names a namespace cannot take: the public attributes of ``dummy_input()`` (PipelineBuilder)
#: and ``dc(...)`` (DataCollection), which shadow a namespace of the same name. Kept equal to
#: them by tests/unit/test_register.py (the builders import this module, so it cannot import
#: them).
BUILDER_ATTRIBUTES: FrozenSet[str] = frozenset({
    "add_operator", "as_function", "pipeline_config", "remote", "search_milvus", "steps",
    "to_list", "to_milvus"})

#: The user's operators, registered name -> class.
_USER_OPERATORS: Dict[str, Type[Operator]] = {}

T = TypeVar("T")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\.[A-Za-z][A-Za-z0-9_]*$")
_JSON_TYPES = (bool, int, float, str, list, dict, type(None))


def register(name: str, *, inputs: Optional[Sequence[TensorSpec]] = None,
             outputs: Optional[Sequence[TensorSpec]] = None) -> Callable[[T], T]:
    """Register an operator as ``name`` (``'namespace.operator'``); use as a decorator.

    On an :class:`~towhee_rt.Operator` subclass (or :class:`~towhee_rt.ModelOperator`), which
    declares its ``inputs``, ``outputs`` and ``params_spec``: sets its ``name`` and returns it.
    On a plain function, with ``inputs=`` and ``outputs=``: generates an operator class for it
    (the function's contract: :mod:`towhee_rt.backends.function_operator`) and returns the function
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
            _add_user_operator(name, obj)  # first: a refused class is left as it was
            obj.name = name
            return obj
        if inspect.isfunction(obj):
            _add_user_operator(name, _function_class(name, obj, inputs, outputs))
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
    if namespace in BUILDER_ATTRIBUTES:
        raise ConfigError(f"operator namespace {namespace!r} is the name of a pipeline method "
                          f"(dummy_input().{namespace}, dc(...).{namespace}); choose another "
                          f"namespace for {name!r}")


def _check_class(name: str, cls: type) -> None:
    if not issubclass(cls, Operator):
        raise ConfigError(f"{name}: {cls.__name__} is not an operator; subclass "
                          f"towhee_rt.Operator (or towhee_rt.ModelOperator for a neural model), "
                          f"or register a plain function with inputs= and outputs=")
    declared = cls.__dict__.get("name") or ""
    if declared and declared != name:
        raise ConfigError(f"{name}: class {cls.__name__} declares name = {declared!r}; drop it "
                          f"(register sets it) or register it as {declared!r}")
    _check_specs(name, "inputs", cls.inputs, "declare them on the class: inputs = "
                                            "[TensorSpec('text', 'bytes')]")
    _check_specs(name, "outputs", cls.outputs, "declare them on the class: outputs = "
                                              "[TensorSpec('embedding', 'float32', (-1,))]")
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
                          f"{specs!r}; {hint}")
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


def namespaces() -> Dict[str, List[str]]:
    """Namespace -> sorted operator names in it, e.g. ``{'image_decode': ['cv2_rgb', ...]}``."""
    out: Dict[str, List[str]] = {}
    for full in list(BUILTIN_OPERATORS) + list(_USER_OPERATORS):
        ns, name = full.split(".", 1)
        out.setdefault(ns, []).append(name)
    return {ns: sorted(names) for ns, names in sorted(out.items())}


def operator_class(name: str) -> Type[Operator]:
    """Import and return the class registered as ``name`` (e.g. ``'image_embedding.timm'``)."""
    if name in _USER_OPERATORS:
        return _USER_OPERATORS[name]
    if name not in BUILTIN_OPERATORS:
        raise ConfigError(
            f"unknown operator {name!r}; registered operators are: "
            f"{', '.join(sorted(list(BUILTIN_OPERATORS) + list(_USER_OPERATORS)))} (import "
            f"the module that registers yours, or add one with towhee_rt.register)")
    module_name, class_name = BUILTIN_OPERATORS[name]
    cls = getattr(importlib.import_module(f"towhee_rt.backends.{module_name}"), class_name)
    if cls.name != name:
        raise ConfigError(f"operator class {module_name}.{class_name} is registered as {name!r} "
                          f"but declares name = {cls.name!r}; make them agree")
    return cls


def user_operators() -> Dict[str, Type[Operator]]:
    """The user's registered operators, name -> class (a copy)."""
    return dict(_USER_OPERATORS)


def is_user_operator(cls: type) -> bool:
    """Whether ``cls`` is the user's (registered with :func:`register`), not built in."""
    return not cls.__module__.startswith("towhee_rt.backends.")


def how_to_declare(cls: type, param: str, value: Any) -> str:
    """What to write so that the user's operator ``cls`` takes ``param`` (given as ``value``):
    for a registered function a keyword-only argument, for a class a :class:`Param`."""
    if issubclass(cls, FunctionOperator):
        fn = cls.function
        inputs = "".join(f"{spec.name}, " for spec in cls.inputs)
        return (f"to give {cls.name} a param, add it to the function {fn.__name__}() as a "
                f"keyword-only argument with a default: def {fn.__name__}({inputs}*, "
                f"{param}={value!r})")
    types = _PARAM_TYPE_TEXT.get(type(value), "(int, float, str)")
    entry = f"Param({param!r}, {types}, {value!r}, 'what it does')"
    if "params_spec" in cls.__dict__:
        return (f"to give {cls.name} a param, add {entry} to the params_spec tuple of the class "
                f"{cls.__qualname__}")
    base = next(b.__name__ for b in cls.__mro__[1:] if "params_spec" in b.__dict__)
    return (f"to give {cls.name} a param, declare it in the class {cls.__qualname__}: "
            f"params_spec = {base}.params_spec + ({entry},)")


_PARAM_TYPE_TEXT = {bool: "(bool,)", int: "(int,)", float: "(int, float)", str: "(str,)",
                    list: "(list,)", dict: "(dict,)"}


def _add_user_operator(name: str, cls: Type[Operator]) -> None:
    """Register ``cls`` as ``name`` (checked by :func:`register`).

    A name is taken once: a built-in name, or one registered by another class, is refused.
    The same class (same module and qualified name) may register its name again, as happens
    when a module is reloaded or a notebook cell is run again; the new definition wins.
    """
    if name in BUILTIN_OPERATORS:
        raise ConfigError(f"operator name {name!r} is a built-in operator; register yours "
                          f"under another name, e.g. 'my_{name}'")
    taken = _USER_OPERATORS.get(name)
    if taken is not None and _where(taken) != _where(cls):
        raise ConfigError(f"operator name {name!r} is already registered by {_where(taken)}; "
                          f"choose another name for {_where(cls)}, or drop one of the two "
                          f"registrations")
    _USER_OPERATORS[name] = cls


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
