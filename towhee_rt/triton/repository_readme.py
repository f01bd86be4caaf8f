"""A model repository's README.md, written from the repository itself.

It is rendered from the ``config.pbtxt`` files on disk, not from the pipeline just built, so
it describes every pipeline (ensemble) in the repository: several pipelines can share one
(``build_model_repo(..., overwrite=True)``), and adding one keeps the others in the README.
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Dict, List, Mapping

from tritonclient.grpc import model_config_pb2 as pb

from .. import shipped
from ..backends.wire import (PARAM_FINGERPRINT, PARAM_FORMAT, PARAM_INPUT_KIND, PARAM_MERGE_REQUESTS,
                             PARAM_OPERATOR, PARAM_PARAMS, SHAPES_SUFFIX)
from . import flags
from .config import read_parameters, read_repository

#: The README's commands take the admin key from the shell (a key printed there would be shared).
_ADMIN_KEY_VARIABLE = "$ADMIN_KEY"
_SECTION = string.Template("""\
## Pipeline `$ensemble`

Clients call the ensemble `$ensemble`; it takes $inputs and returns $outputs.
$fingerprint
Each operator is its own Python-backend model, chained by the ensemble:

| model | operator | format | instances | dynamic batching |
|---|---|---|---|---|
$rows
$refusals""")


def render_readme(root: Path) -> str:
    """The README.md of the repository at ``root``: every pipeline in it, its models and
    weights, how to start, query and debug it."""
    configs = read_repository(root)
    ensembles = [name for name, config in configs.items() if config.platform == "ensemble"]
    steps = {name: [s.model_name for s in configs[name].ensemble_scheduling.step
                    if s.model_name in configs] for name in ensembles}
    first = ensembles[0] if ensembles else "pipeline"
    kind = read_parameters(configs[first]).get(PARAM_INPUT_KIND, "") if ensembles else ""
    template = string.Template(shipped.read_template("README.md.template"))
    return template.substitute(
        pipelines=", ".join(f"`{name}`" for name in ensembles) or "none",
        sections="\n".join(_section(name, steps[name], configs) for name in ensembles),
        weights=_weights_rows([m for name in ensembles for m in steps[name]], configs),
        host_command=_shell(["tritonserver"] + flags.server_flags(
            "$PWD", gpu_metrics=False, admin_key=_ADMIN_KEY_VARIABLE)),
        debug_command=_shell(flags.container_command(log_verbose=1,
                                                     admin_key=_ADMIN_KEY_VARIABLE)),
        ensemble=first, example="'photo.jpg'" if kind == "image" else "'some text'")


def _section(ensemble: str, models: List[str], configs: Mapping[str, pb.ModelConfig]) -> str:
    """One pipeline: what it takes and returns, and a row per operator model."""
    if not models:
        return f"## Pipeline `{ensemble}`\n\nIts models are missing from this directory.\n"
    fingerprint = read_parameters(configs[ensemble]).get(PARAM_FINGERPRINT)
    fingerprint = (f"Its fingerprint is `{fingerprint}` (the `{PARAM_FINGERPRINT}` parameter of "
                   f"`{ensemble}/config.pbtxt`): vectors with another fingerprint come from "
                   "other weights or preprocessing and are not comparable.\n"
                   if fingerprint else "")
    refusals = [f"- **`{m}`: {_refusal(configs[m])}**" for m in models if _refusal(configs[m])]
    return _SECTION.substitute(
        ensemble=ensemble, fingerprint=fingerprint,
        refusals=("\nAccuracy gate refusals (these models serve the next format of their "
                  "`format_priority`):\n\n" + "\n".join(refusals) + "\n") if refusals else "",
        rows="\n".join(_row(m, configs[m]) for m in models),
        inputs=_tensors(configs[models[0]].input), outputs=_tensors(configs[models[-1]].output))


def _row(model: str, config: pb.ModelConfig) -> str:
    parameters = read_parameters(config)
    operator = json.loads(parameters.get(PARAM_OPERATOR) or "{}").get("name", "-")
    group = config.instance_group[0] if config.instance_group else pb.ModelInstanceGroup()
    where = (f"GPU {list(group.gpus)}" if group.kind == pb.ModelInstanceGroup.KIND_GPU
             else "CPU")
    batching = "on" if parameters.get(PARAM_MERGE_REQUESTS) == "yes" else "off"
    return (f"| `{model}` | `{operator}` | {parameters.get(PARAM_FORMAT) or '-'} | "
            f"{group.count or 1} x {where} | {batching} |")


def _refusal(config: pb.ModelConfig) -> str:
    """The accuracy gate's refusal in a model's format text (``[... REFUSED ...]``), or ''."""
    text = read_parameters(config).get(PARAM_FORMAT) or ""
    start = text.find("[")
    end = text.find("]", start)
    inside = text[start + 1:end] if 0 <= start < end else ""
    return inside if " REFUSED by the accuracy gate" in inside else ""


def _tensors(tensors) -> str:
    """``\\`image\\` (TYPE_STRING)``, leaving out the shapes that padded tensors travel with."""
    return ", ".join(f"`{t.name}` ({pb.DataType.Name(t.data_type)})" for t in tensors
                     if not t.name.endswith(SHAPES_SUFFIX))


def _weights_rows(models: List[str], configs: Mapping[str, pb.ModelConfig]) -> str:
    """The README's weights table: one row per model operator, from its lock."""
    rows = []
    for model in models:
        params: Dict = json.loads(read_parameters(configs[model]).get(PARAM_PARAMS) or "{}")
        lock = params.get("lock")
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
        rows.append(f"| `{model}` | `{lock.get('model_name')}` | {source} | "
                    f"`{lock.get('file')}` | `{lock.get('sha256')}` | `{preprocess}` |")
    return "\n".join(rows) or "| - | - | - | - | - | - |"


def _shell(argv: List[str]) -> str:
    """A command for the README: one flag per line."""
    return " \\\n          ".join(argv)
