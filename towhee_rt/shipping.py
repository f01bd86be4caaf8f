"""Shipping the user's own operators (``towhee_rt.register``) into a model repository.

A served model holds its operator's source, never a pickle. For a user's operator that is
the one module file defining it, copied to ``<model>/1/towhee_ops/user_<module>.py``, plus a
small stand-in ``towhee_rt`` package (``<model>/1/towhee_rt/``: :data:`towhee_rt.shipped.STAND_IN`),
which answers the module's ``from towhee_rt import Operator, TensorSpec, Param, register`` from
the shipped operator base: the server's Python needs no towhee_rt.

So a module can be shipped when that one file is all it needs: it is a real ``.py`` file (not
``__main__``, a notebook cell or an interactive session), defines the operator at module level,
and imports only the standard library, installed packages and what the stand-in offers; no
relative imports and no other local modules. :func:`check_shippable` says what to change
otherwise.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import site
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import FrozenSet, Iterable, Optional

from . import shipped
from .backends.function_operator import FunctionOperator
from .errors import ConfigError
from .registry import is_user_operator

#: A user's module is shipped as ``towhee_ops/<USER_PREFIX><its last name>.py``.
USER_PREFIX = "user_"
#: What ``from towhee_rt import ...`` / ``from towhee_rt.operator import ...`` may take in a
#: shipped module: the names the stand-in package defines.
STAND_IN_NAMES: FrozenSet[str] = frozenset({
    "Operator", "OperatorInputError", "OperatorLimitError", "Param", "TensorSpec",
    "ModelOperator", "ModelInput", "register", "*"})
#: towhee_rt modules a shipped module may import: the stand-in and what it maps
#: (``towhee_rt.backends`` is the shipped ``towhee_ops``).
_STAND_IN_MODULES = ("towhee_rt", "towhee_rt.operator")
_MOVE_IT = ("move the operator to its own module file next to your script (e.g. my_ops.py), "
            "import it from there (import my_ops) and build the repository again")


def served_module(cls: type) -> str:
    """The module inside the model's ``towhee_ops`` package that holds ``cls`` (the
    ``module`` of config.pbtxt's ``towhee_operator``): ``image_decode``, ``user_my_ops``."""
    last = cls.__module__.rsplit(".", 1)[-1]
    return USER_PREFIX + last if is_user_operator(cls) else last


def check_shippable(cls: type) -> Path:
    """The source file of user operator ``cls``'s module, checked to be shippable alone.

    Raises :class:`~towhee_rt.ConfigError` saying why it is not, and what to do.
    """
    what = f"operator {cls.name!r} ({cls.__qualname__})"
    target = cls.function if issubclass(cls, FunctionOperator) else cls
    module_name = cls.__module__
    if module_name == "__main__":
        raise ConfigError(f"{what} is defined in __main__ (your script, a notebook cell or an "
                          f"interactive session), whose source cannot be shipped into a model "
                          f"repository: {_MOVE_IT}")
    if "." in cls.__qualname__ or "<" in cls.__qualname__:
        raise ConfigError(f"{what} is defined inside {cls.__qualname__.rsplit('.', 1)[0]}; a "
                          f"served model finds it by its name in module {module_name}: define "
                          f"it at the top level of the module")
    module = sys.modules.get(module_name)
    if module is None or getattr(module, cls.__qualname__, None) is not target:
        raise ConfigError(f"{what}: module {module_name} has no top-level "
                          f"{cls.__qualname__} that is this operator (redefined or renamed "
                          f"since it was registered?); a served model finds it by that name: "
                          f"import the module again, or register the operator under its "
                          f"module-level name")
    source = getattr(module, "__file__", None)
    if not source or not source.endswith(".py") or not os.path.isfile(source):
        raise ConfigError(f"{what} is defined in module {module_name}, which has no .py source "
                          f"file ({source or 'none'}) to ship into the model repository: "
                          f"{_MOVE_IT}")
    problem = _import_problem(Path(source), module_name)
    if problem:
        raise ConfigError(f"{what} is defined in {source}, which {problem}. A served model "
                          f"holds only that one file: move what the operator needs into it, "
                          f"importing only the standard library, installed packages (installed "
                          f"where tritonserver runs too) and {_stand_in_text()} from towhee_rt")
    return Path(source)


def ship(cls: type, version_dir: Path) -> None:
    """Copy user operator ``cls``'s module and the stand-in towhee_rt into ``version_dir``
    (a model's ``1/``, which already holds ``towhee_ops/``)."""
    shipped.copy_tree(shipped.user_module_tree(check_shippable(cls), served_module(cls)),
                      version_dir)
    shipped.copy_tree(shipped.STAND_IN, version_dir)


def _stand_in_text() -> str:
    return ", ".join(sorted(n for n in STAND_IN_NAMES if n != "*"))


def _import_problem(source: Path, module_name: str) -> Optional[str]:
    """What, among the imports of ``source``, a served model could not satisfy (or None)."""
    tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            dots = "." * node.level + (node.module or "")
            return (f"uses a relative import (line {node.lineno}: from {dots} import "
                    f"{', '.join(a.name for a in node.names)})")
        if isinstance(node, ast.Import):
            imported = [(a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported = [(node.module or "", tuple(a.name for a in node.names))]
        else:
            continue
        for name, names in imported:
            problem = _towhee_rt_problem(name, names) if _top(name) == "towhee_rt" \
                else _local_problem(name, module_name)
            if problem:
                return f"{problem} (line {node.lineno})"
    return None


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _towhee_rt_problem(name: str, names: Iterable[str]) -> Optional[str]:
    if name == "towhee_rt.backends" or name.startswith("towhee_rt.backends."):
        return None  # shipped as towhee_ops, which the stand-in maps to this name
    if name not in _STAND_IN_MODULES:
        return (f"imports {name}, which a served model does not have: import only "
                f"{_stand_in_text()} from towhee_rt (or towhee_rt.operator), and the operator "
                f"base from towhee_rt.backends")
    missing = sorted(set(names) - STAND_IN_NAMES)
    if missing:
        return (f"imports {', '.join(missing)} from {name}, which a served model does not have "
                f"(keep pipeline code out of the operator's module)")
    return None


def _local_problem(name: str, module_name: str) -> Optional[str]:
    """Why importing ``name`` ties the module to local files (None: stdlib, installed, or not
    found here at all, e.g. an optional import)."""
    top = _top(name)
    if top == "__future__" or top in _stdlib_names() or top in _installed_names():
        return None
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return None
    locations = list(spec.submodule_search_locations or []) or [spec.origin]
    if all(_in_installed_location(p) for p in locations):
        return None
    where = spec.origin if spec.origin and spec.origin != "namespace" else locations[0]
    return f"imports the local module {top!r} ({where}), not an installed package"


def _stdlib_names() -> FrozenSet[str]:
    names = getattr(sys, "stdlib_module_names", None)
    return frozenset(names) if names else frozenset(sys.builtin_module_names)


def _installed_names() -> FrozenSet[str]:
    """Top-level import names of the installed distributions."""
    return frozenset(metadata.packages_distributions())


def _in_installed_location(path: str) -> bool:
    roots = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    roots.add(site.getusersitepackages())
    real = os.path.realpath(path)
    return any(root and real.startswith(os.path.realpath(root) + os.sep) for root in roots)
