"""Everything towhee_rt copies into what it generates: the one list of code that ships.

Shipped code runs where towhee_rt is not installed (a tritonserver's Python, a container). So
it imports only the standard library, numpy, the declared third-party packages (heavy ones,
such as torch, DALI or tensorrt, only inside the functions that need them) and its own
siblings; never towhee_rt. The one exception is the stand-in ``towhee_rt`` package of user
operators, which *is* what answers ``import towhee_rt`` in a served model. Every shipped file
starts with a ``# SHIPPED:`` line saying where it goes; ``tests/unit/test_shipped_code.py``
checks the marker and the import rule, and imports each tree as it is laid out here in a
Python without towhee_rt.

What ships, and where::

    OPERATORS   backends/*.py                         -> <model>/1/towhee_ops/
    ADAPTER     model_repo_templates/model.py         -> <model>/1/model.py
    STAND_IN    model_repo_templates/towhee_rt_stand_in.py
                                                      -> <model>/1/towhee_rt/__init__.py
                (only in the models of user operators, beside their module:
                 user_module_tree(), -> <model>/1/towhee_ops/user_<module>.py)
    SUPERVISOR  towhee_rt/triton/{procs,admin,supervisor,command_merge,supervisor_main}.py and
                model_repo_templates/supervisor_package_{init,main}.py
                                                      -> <image context>/towhee_rt_supervisor/

and the templates rendered into text (:func:`read_template`): ``README.md.template`` (the
repository's README), ``Dockerfile.template`` and ``entrypoint.sh.template`` (the image's build
context). :func:`copy_tree` is the one way anything here is copied.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Tuple

from . import backends as _backends_pkg
from . import model_repo_templates as _templates_pkg
from .triton.supervisor_main import PACKAGE as SUPERVISOR_PACKAGE

#: The first line of every shipped source file (and template) starts with this.
MARKER = "# SHIPPED:"

_LIBRARY = Path(__file__).resolve().parent
#: ``backends/`` (installed as ``towhee_rt.backends``).
BACKENDS_DIR = Path(_backends_pkg.__file__).resolve().parent
#: ``model_repo_templates/`` (installed as ``towhee_rt.model_repo_templates``).
TEMPLATES_DIR = Path(_templates_pkg.__file__).resolve().parent
#: The package name of the operators inside a model's version directory.
OPS_PACKAGE = "towhee_ops"
#: The package name of the stand-in for user operators.
STAND_IN_PACKAGE = "towhee_rt"


@dataclasses.dataclass(frozen=True)
class ShippedFile:
    """One file: where it comes from and its name where it lands."""

    source: Path
    name: str


@dataclasses.dataclass(frozen=True)
class ShippedTree:
    """Files that land together in ``<destination>/<directory>/``.

    ``package`` is the name the tree is imported by where it lands (empty for model.py, which
    Triton loads by path); ``ours`` is False for the user's own module, which carries no
    marker.
    """

    name: str
    directory: str
    files: Tuple[ShippedFile, ...]
    package: str = ""
    ours: bool = True

    @property
    def sources(self) -> Tuple[Path, ...]:
        """The files it copies, where they come from."""
        return tuple(f.source for f in self.files)


def _operators() -> ShippedTree:
    # Every backend module, always: small files, and no dependency analysis to go wrong.
    files = tuple(ShippedFile(p, p.name) for p in sorted(BACKENDS_DIR.glob("*.py")))
    return ShippedTree("operators", OPS_PACKAGE, files, package=OPS_PACKAGE)


OPERATORS = _operators()
ADAPTER = ShippedTree("adapter", "", (ShippedFile(TEMPLATES_DIR / "model.py", "model.py"),))
STAND_IN = ShippedTree(
    "stand-in", STAND_IN_PACKAGE,
    (ShippedFile(TEMPLATES_DIR / "towhee_rt_stand_in.py", "__init__.py"),),
    package=STAND_IN_PACKAGE)
#: Standard library only; they import each other relatively.
SUPERVISOR_MODULES = ("procs", "admin", "supervisor", "command_merge", "supervisor_main")
SUPERVISOR = ShippedTree(
    "supervisor", SUPERVISOR_PACKAGE,
    tuple(ShippedFile(_LIBRARY / "triton" / f"{m}.py", f"{m}.py") for m in SUPERVISOR_MODULES)
    + (ShippedFile(TEMPLATES_DIR / "supervisor_package_init.py", "__init__.py"),
       ShippedFile(TEMPLATES_DIR / "supervisor_package_main.py", "__main__.py")),
    package=SUPERVISOR_PACKAGE)
#: Every tree of towhee_rt's own code that ships.
TREES = (OPERATORS, ADAPTER, STAND_IN, SUPERVISOR)
#: Templates rendered into generated text files (their marker line is dropped).
TEMPLATES = ("README.md.template", "Dockerfile.template", "entrypoint.sh.template")


def user_module_tree(source: Path, module: str) -> ShippedTree:
    """The tree of a user operator's module file: ``towhee_ops/<module>.py``."""
    return ShippedTree(f"user module {module}", OPS_PACKAGE,
                       (ShippedFile(Path(source), f"{module}.py"),), package=OPS_PACKAGE,
                       ours=False)


def copy_tree(tree: ShippedTree, destination: Path) -> Path:
    """Copy ``tree``'s files verbatim into ``destination/<tree.directory>/`` (created when
    missing; files of other trees already there are kept) and return that directory."""
    target = Path(destination) / tree.directory
    target.mkdir(parents=True, exist_ok=True)
    for file in tree.files:
        shutil.copy2(file.source, target / file.name)
    return target


def read_template(name: str) -> str:
    """The text of template ``name`` (one of :data:`TEMPLATES`) without its marker line."""
    if name not in TEMPLATES:
        raise ValueError(f"{name!r} is not a shipped template; the templates are {TEMPLATES}")
    text = (TEMPLATES_DIR / name).read_text()
    first, _, rest = text.partition("\n")
    return rest if first.startswith(MARKER) else text
