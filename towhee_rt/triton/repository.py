"""Pipeline -> Triton model repository on disk.

Layout written for a pipeline named ``pipeline`` with two operators::

    repo/
      README.md                              every pipeline in the repository: its models,
                                             how to start, query and debug them
      pipeline/config.pbtxt, pipeline/1/     the ensemble that chains the operators
      pipeline_0_image_decode_cv2_rgb/
        config.pbtxt                         operator name + params as JSON in `parameters`
        1/model.py                           the generic adapter (model_repo_templates/model.py)
        1/towhee_ops/*.py                    the operator source (a copy of backends/)
      pipeline_1_image_embedding_timm/
        ...  1/weights.safetensors           model files live beside the code
      pipeline_2_my_text_lower/              a user's operator (towhee_rt.register) also has
        1/towhee_ops/user_my_ops.py          its module (``towhee_operator`` names it)
        1/towhee_rt/                         a stand-in for its ``from towhee_rt import ...``

Nothing in the repository imports towhee_rt or is pickled: it runs in any tritonserver whose
Python has the third-party packages. What is copied in is listed in :mod:`towhee_rt.shipped`;
a user's operator is checked and shipped by :mod:`towhee_rt.shipping`.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import List, Tuple

from .. import shipped, shipping
from ..build import BuiltPipeline
from ..errors import ConfigError
from ..registry import is_user_operator
from . import config as triton_config
from .config import OperatorModel
from .repository_readme import render_readme
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclasses.dataclass(frozen=True)
class ModelRepository:
    """A written repository: its path, ensemble name and operator models in order."""

    path: Path
    model_name: str
    models: Tuple[OperatorModel, ...]
    #: The pipeline's fingerprint, in the ensemble's config (``towhee_fingerprint``).
    fingerprint: str = ""

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
        shaped_inputs=shaped_inputs[step.index], shaped_outputs=shaped_outputs[step.index],
        takes_deadline=step.index > 0, passes_deadline=step.index < len(steps) - 1)
        for step in steps]


def build_model_repo(pipe, path, model_name: str = "pipeline",
                     overwrite: bool = False) -> ModelRepository:
    """Write ``pipe`` as a Triton model repository at ``path`` and return its description.

    Builds the pipeline first if it is not built yet (:meth:`~towhee_rt.Pipeline.build`).
    ``path`` must not exist or be empty unless ``overwrite=True`` (then models of the same
    names are replaced and other models in the directory are kept, so several pipelines can
    share one repository; its README.md then describes them all).
    """
    root = Path(path)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise ConfigError(f"{root} is not empty; pass overwrite=True to replace the models of "
                          f"pipeline {model_name!r} in it, or choose a new directory")
    for op in pipe.operators:  # before the (expensive) build: refuse what cannot be served
        if is_user_operator(type(op)):
            shipping.check_shippable(type(op))
    built = pipe.build()
    models = plan_models(built, model_name)
    root.mkdir(parents=True, exist_ok=True)
    for model, step in zip(models, built.steps):
        model_dir = _fresh_dir(root / model.model_name)
        version_dir = model_dir / "1"
        version_dir.mkdir()
        shipped.copy_tree(shipped.ADAPTER, version_dir)
        shipped.copy_tree(shipped.OPERATORS, version_dir)
        if is_user_operator(step.operator_class):
            shipping.ship(step.operator_class, version_dir)
        for file in model.files:
            file.write(version_dir / file.name)
        _write_config(model_dir, triton_config.operator_model_config(model))
    ensemble_dir = _fresh_dir(root / model_name)
    (ensemble_dir / "1").mkdir()
    _write_config(ensemble_dir, triton_config.ensemble_config(model_name, models, built.limits,
                                                              built.fingerprint))
    repo = ModelRepository(root, model_name, tuple(models), built.fingerprint)
    (root / "README.md").write_text(render_readme(root))
    return repo


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _write_config(model_dir: Path, config) -> None:
    (model_dir / "config.pbtxt").write_text(triton_config.to_pbtxt(config))
