"""``towhee-rt build MODULE:PIPELINE REPO``: write a pipeline defined in Python as a Triton
model repository, as ``towhee_rt.build_model_repo(pipe, REPO)`` does.

``MODULE`` is a dotted module name (importable from the current directory) or the path of a
``.py`` file; ``PIPELINE`` names an attribute of it: a pipeline (``... .as_function()``) or a
callable without arguments that returns one. Usage problems (no such module or attribute,
not a pipeline, a non-empty ``REPO`` without ``--overwrite``) exit with code 2, a failed build
with code 1.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ConfigError, TowheeRTError

DESCRIPTION = ("Write a pipeline defined in a Python module as a Triton model repository "
               "(what towhee_rt.build_model_repo does).")


class UsageError(Exception):
    """What the user asked for cannot be found or is not a pipeline (exit code 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``build`` to ``parser``."""
    parser.add_argument("pipeline", metavar="MODULE:PIPELINE",
                        help="a module (dotted name, or a path to a .py file) and the name of "
                             "a pipeline in it, or of a function without arguments returning "
                             "one; e.g. my_pipelines:image_pipe or app/pipes.py:make_pipe")
    parser.add_argument("repository", type=Path, metavar="REPO",
                        help="where to write the model repository")
    parser.add_argument("--model-name", default="pipeline",
                        help="the name clients call the pipeline by (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this pipeline's models in an existing REPO")


def _import(module: str) -> ModuleType:
    """The module named ``module`` (dotted) or held in the file ``module`` (``.py``)."""
    if module.endswith(".py") or os.sep in module:
        path = Path(module)
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        loaded = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))  # its sibling modules import
        try:
            spec.loader.exec_module(loaded)
        finally:
            sys.path.remove(str(path.resolve().parent))
        return loaded
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would find it
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise UsageError(f"no module named {module!r} (run from the folder that holds it, "
                             "or pass the path of its .py file)") from None
        raise


def load_pipeline(spec: str) -> Any:
    """The pipeline ``MODULE:PIPELINE`` names; raises :class:`UsageError` saying what is wrong."""
    from .pipeline import Pipeline

    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"{spec!r}: expected MODULE:PIPELINE, e.g. my_pipelines:image_pipe")
    module = _import(module_name)
    if not hasattr(module, attribute):
        raise UsageError(f"module {module_name!r} has no attribute {attribute!r}")
    value = getattr(module, attribute)
    if not isinstance(value, Pipeline) and callable(value):
        try:
            value = value()
        except TypeError as exc:
            raise UsageError(f"{spec}: calling it without arguments failed ({exc}); name a "
                             "pipeline or a function without arguments returning one") from None
    if not isinstance(value, Pipeline):
        raise UsageError(f"{spec} is not a pipeline (its type: {type(value).__name__}); name "
                         "one made by towhee_rt.dummy_input()....as_function()")
    return value


def run(args: argparse.Namespace) -> int:
    """Build as ``args`` say; the exit code (0 written, 1 the build failed, 2 usage)."""
    from .triton.repository import build_model_repo

    try:
        pipe = load_pipeline(args.pipeline)
        repo = build_model_repo(pipe, args.repository, model_name=args.model_name,
                                overwrite=args.overwrite)
    except (UsageError, ConfigError) as exc:
        print(f"towhee-rt build: error: {exc}", file=sys.stderr)
        return 2
    except TowheeRTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {repo.path} (models: {', '.join(repo.model_names)}); serve it with: "
          f"towhee-rt serve {repo.path}")
    built = pipe.build()  # already built: the formats chosen, one line per model
    print(built.summary())
    for step in built.steps:
        if step.format and step.format.refusal():
            print(f"WARNING: {step.index}:{step.name}: {step.format.refusal()}; it serves "
                  f"{step.format.format} instead (see the repository's README.md)",
                  file=sys.stderr)
    return 0
