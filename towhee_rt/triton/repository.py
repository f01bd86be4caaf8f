"""Pipeline -> Triton model repository on disk.

Layout written for a pipeline named ``pipeline`` with two operators::

    repo/
      README.md                              what each model is, how to start and debug it
      pipeline/config.pbtxt, pipeline/1/     the ensemble that chains the operators
      pipeline_0_image_decode_cv2_rgb/
        config.pbtxt                         operator name + params as JSON in `parameters`
        1/model.py                           the generic adapter (model_repo_templates/model.py)
        1/towhee_ops/*.py                    the operator source (a copy of towhee_rt/backends)
      pipeline_1_image_embedding_timm/
        ...  1/weights.safetensors           model files live beside the code
      pipeline_2_my_text_lower/              a user's operator (towhee_rt.register) also has
        1/towhee_ops/user_my_ops.py          its module (``towhee_operator`` names it)
        1/towhee_rt/                         a stand-in for its ``from towhee_rt import ...``

Nothing in the repository imports towhee_rt or is pickled: it runs in any tritonserver whose
Python has the third-party packages (towhee_rt.shipping).
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import string
from pathlib import Path
from typing import List, Tuple

from .. import backends as _backends_pkg
from .. import model_repo_templates as _templates_pkg
from ..build import BuiltPipeline
from ..errors import ConfigError
from .. import shipping
from . import config as triton_config
from . import flags
from .config import OperatorModel

BACKENDS_DIR = Path(_backends_pkg.__file__).parent
TEMPLATES_DIR = Path(_templates_pkg.__file__).parent
OPS_PACKAGE = "towhee_ops"
#: The README's commands take the admin key from the shell (a key printed there would be shared).
_ADMIN_KEY_VARIABLE = "$ADMIN_KEY"
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclasses.dataclass(frozen=True)
class ModelRepository:
    """A written repository: its path, ensemble name and operator models in order."""

    path: Path
    model_name: str
    models: Tuple[OperatorModel, ...]

    @property
    def model_names(self) -> List[str]:
        """Every model in the repository, the ensemble last."""
        return [m.model_name for m in self.models] + [self.model_name]


def plan_models(built: BuiltPipeline, model_name: str = "pipeline") -> List[OperatorModel]:
    """Describe the operator models of a built pipeline without touching the disk (pure)."""
    if not _NAME_RE.match(model_name):
        raise ConfigError(f"model_name {model_name!r} must start with a letter and contain only "
                          "letters, digits, '_' and '-' (it becomes a directory name)")
    steps = built.steps
    shaped_outputs: List[Tuple[str, ...]] = [() for _ in steps]
    shaped_inputs: List[Tuple[str, ...]] = [() for _ in steps]
    for k in range(len(steps) - 1):  # each tensor handed from step k to step k + 1
        pairs = [(out, nxt) for out, nxt in zip(steps[k].operator_class.outputs,
                                                steps[k + 1].operator_class.inputs)
                 if triton_config.carries_shapes(out, nxt)]
        shaped_outputs[k] = tuple(out.name for out, _ in pairs)
        shaped_inputs[k + 1] = tuple(nxt.name for _, nxt in pairs)
    # The pipeline's own outputs reach the client padded too, which crops them: arrays such
    # as images (a vector's one variable dimension is the model's width, the same for all).
    shaped_outputs[-1] = tuple(out.name for out in steps[-1].operator_class.outputs
                               if triton_config.carries_shapes(out, out) and len(out.shape) > 1)
    return [OperatorModel(
        model_name=f"{model_name}_{step.index}_{step.name.replace('.', '_')}",
        operator=step.name, module=shipping.served_module(step.operator_class),
        class_name=step.operator_class.__qualname__, params=dict(step.params),
        inputs=tuple(step.operator_class.inputs), outputs=tuple(step.operator_class.outputs),
        config=step.config, format=step.format.summary() if step.format else "",
        files=step.model_files, limits=built.limits if step.index == 0 else None,
        shaped_inputs=shaped_inputs[step.index], shaped_outputs=shaped_outputs[step.index])
        for step in steps]


def build_model_repo(pipe, path, model_name: str = "pipeline",
                     overwrite: bool = False) -> ModelRepository:
    """Write ``pipe`` as a Triton model repository at ``path`` and return its description.

    Builds the pipeline first if it is not built yet (:meth:`~towhee_rt.Pipeline.build`).
    ``path`` must not exist or be empty unless ``overwrite=True`` (then models of the same
    names are replaced and other models in the directory are kept, so several pipelines can
    share one repository).
    """
    root = Path(path)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise ConfigError(f"{root} is not empty; pass overwrite=True to replace the models of "
                          f"pipeline {model_name!r} in it, or choose a new directory")
    for op in pipe.operators:  # before the (expensive) build: refuse what cannot be served
        if shipping.is_user_operator(type(op)):
            shipping.check_shippable(type(op))
    built = pipe.build()
    models = plan_models(built, model_name)
    root.mkdir(parents=True, exist_ok=True)
    for model, step in zip(models, built.steps):
        model_dir = _fresh_dir(root / model.model_name)
        version_dir = model_dir / "1"
        version_dir.mkdir()
        _copy_operator_source(version_dir)
        if shipping.is_user_operator(step.operator_class):
            shipping.ship(step.operator_class, version_dir)
        for file in model.files:
            file.write(version_dir / file.name)
        _write_config(model_dir, triton_config.operator_model_config(model))
    ensemble_dir = _fresh_dir(root / model_name)
    (ensemble_dir / "1").mkdir()
    _write_config(ensemble_dir, triton_config.ensemble_config(model_name, models, built.limits))
    repo = ModelRepository(root, model_name, tuple(models))
    (root / "README.md").write_text(render_readme(repo))
    return repo


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _copy_operator_source(version_dir: Path) -> None:
    """model.py plus every backend module: small files, and no dependency analysis to go wrong."""
    shutil.copy2(TEMPLATES_DIR / "model.py", version_dir / "model.py")
    ops_dir = version_dir / OPS_PACKAGE
    ops_dir.mkdir()
    for source in sorted(BACKENDS_DIR.glob("*.py")):
        shutil.copy2(source, ops_dir / source.name)


def _write_config(model_dir: Path, config) -> None:
    (model_dir / "config.pbtxt").write_text(triton_config.to_pbtxt(config))


def render_readme(repo: ModelRepository) -> str:
    """The repository's README.md: its models, how to start it and how to debug it."""
    rows = "\n".join(
        f"| `{m.model_name}` | `{m.operator}` | {m.format or '-'} | "
        f"{m.config.instances} x {'GPU ' + str(list(m.config.device_ids)) if m.config.device_ids else 'CPU'} | "
        f"{'on' if m.config.dynamic_batching else 'off'} |"
        for m in repo.models)
    template = string.Template((TEMPLATES_DIR / "README.md.template").read_text())
    return template.substitute(
        host_command=_shell(["tritonserver"] + flags.server_flags(
            "$PWD", gpu_metrics=False, admin_key=_ADMIN_KEY_VARIABLE)),
        debug_command=_shell(flags.container_command(log_verbose=1,
                                                     admin_key=_ADMIN_KEY_VARIABLE)),
        ensemble=repo.model_name, rows=rows, weights=_weights_rows(repo.models),
        inputs=", ".join(f"`{s.name}` ({s.triton_type})" for s in repo.models[0].inputs),
        outputs=", ".join(f"`{s.name}` ({s.triton_type})" for s in repo.models[-1].outputs))


def _weights_rows(models) -> str:
    """The README's weights table: one row per model operator, from its lock."""
    rows = []
    for m in models:
        lock = m.params.get("lock")
        if not lock:
            continue
        source = lock.get("source", "-")
        if source == "hf-hub":
            source = f"hub `{lock.get('repo_id')}` @ `{lock.get('revision') or 'unknown'}`"
        elif source == "package":
            source = f"package `{lock.get('package')}=={lock.get('version')}`"
        elif source == "random":
            source = f"random (seed {lock.get('seed')})"
        elif source in ("checkpoint", "local-dir"):
            source = f"{source} `{lock.get('checkpoint') or lock.get('path')}`"
        if lock.get("tag"):
            source += f" (tag `{lock['tag']}`)"
        preprocess = json.dumps(lock.get("preprocess", {}), sort_keys=True)
        rows.append(f"| `{m.model_name}` | `{lock.get('model_name')}` | {source} | "
                    f"`{lock.get('file')}` | `{lock.get('sha256')}` | `{preprocess}` |")
    return "\n".join(rows) or "| - | - | - | - | - | - |"


def _shell(argv: List[str]) -> str:
    """A command for the README: one flag per line."""
    return " \\\n          ".join(argv)
