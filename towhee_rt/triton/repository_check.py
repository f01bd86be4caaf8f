"""The served folder, seen from the run side: checked before tritonserver starts (Triton
itself would only say ``failed to open ... config.pbtxt`` somewhere in its log), and left as it
was after a stop (:func:`remove_new_pycache`). Imports nothing of the build side.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional, Set

from ..errors import ServerError

CONFIG = "config.pbtxt"


def _holds_models(folder: Path) -> bool:
    """Whether ``folder`` looks like a model repository: a sub-folder with a config.pbtxt."""
    try:
        return any((child / CONFIG).is_file() for child in folder.iterdir() if child.is_dir())
    except OSError:
        return False


def nested_repositories(repo: Path) -> List[Path]:
    """Sub-folders of ``repo`` that have no config.pbtxt but hold models themselves."""
    return [child for child in sorted(repo.iterdir())
            if child.is_dir() and not (child / CONFIG).is_file() and _holds_models(child)]


def check_repository(repo: Path) -> None:
    """Raise :class:`ServerError`, saying what to pass instead, unless ``repo`` can be a
    model repository: an existing folder of model folders (not a model folder itself, not a
    folder of repositories)."""
    if not repo.is_dir():
        raise ServerError(f"model repository {repo} does not exist or is not a directory; "
                          f"build one with towhee_rt.build_model_repo(pipe, '{repo}') (or "
                          f"towhee-rt build MODULE:PIPELINE {repo}) or pass the right path")
    if (repo / CONFIG).is_file():
        raise ServerError(f"{repo} is one model (it has a {CONFIG}), not a model repository; "
                          f"serve the folder that holds it: {repo.resolve().parent}")
    if not any(child.is_dir() for child in repo.iterdir()):
        raise ServerError(f"model repository {repo} has no model directories")
    nested = nested_repositories(repo)
    if nested:
        names = ", ".join(str(path) for path in nested)
        raise ServerError(f"{repo} holds model repositories, not models ({names} have no "
                          f"{CONFIG} but hold models); serve one of them, e.g. {nested[0]}")


def pipelines(repo: Path) -> List[str]:
    """The pipelines (ensemble models) in ``repo``, sorted by name."""
    return sorted(child.name for child in repo.iterdir()
                  if (child / CONFIG).is_file()
                  and 'platform: "ensemble"' in (child / CONFIG).read_text(errors="replace"))


def single_pipeline(repo: Optional[Path]) -> str:
    """The one pipeline in ``repo``; raises :class:`ServerError` naming the choices when
    there are several (or none to find)."""
    found = pipelines(repo) if repo is not None else []
    if len(found) != 1:
        choices = ", ".join(found) or "none found in the repository"
        raise ServerError(f"the OpenAI gateway serves one pipeline; name it with "
                          f"openai_model= (--openai-model), one of: {choices}")
    return found[0]


def pycache_dirs(repo: Path) -> Set[Path]:
    """The ``__pycache__`` directories under ``repo`` now."""
    try:
        return set(repo.rglob("__pycache__"))
    except OSError:
        return set()


def remove_new_pycache(repo: Path, existing: Set[Path]) -> None:
    """Remove the ``__pycache__`` directories under ``repo`` that are not in ``existing``.

    The Python backend's stub imports each ``model.py`` before any code of ours runs in it,
    with bytecode writing on (its embedded Python ignores ``PYTHONDONTWRITEBYTECODE``), so
    a served repository gains ``1/__pycache__/model.*.pyc``; a stop takes it away again.
    """
    for folder in pycache_dirs(repo) - existing:
        shutil.rmtree(folder, ignore_errors=True)
