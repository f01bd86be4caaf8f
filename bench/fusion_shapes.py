"""The repository shapes of the fusion study (``bench/fusion_study.py``, issue 23 item 2).

:data:`FUSED_MODEL_PY` is the hand-written fused model: ONE Python-backend model whose
``execute()`` runs every step of a generated repository (decode, then model) in one stub
process; :func:`fused_repo` writes a repository around it from a generated ensemble, with the
steps' shipped ``towhee_ops`` and params. :func:`resized_jpegs` and :func:`items_for_resized`
give the client-side pre-resized input of the ``ensemble, pre-resized input`` shape.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List, Sequence

import numpy as np

#: The hand-written fused model: decode then model in one ``execute()`` (one stub process).
FUSED_MODEL_PY = r'''
"""Fused study model (bench/fusion_study.py): decode + model operators in one stub."""
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [_HERE] + [p for p in sys.path if p != _HERE]

import importlib  # noqa: E402

from towhee_ops.batching import process_items, stack_items  # noqa: E402
from towhee_ops.cpu import cpu_threads_per_instance  # noqa: E402
from towhee_ops.wire import ItemFailure, encode_failures  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        steps = json.loads(config["parameters"]["fused_steps"]["string_value"])
        instances = max(1, int((config.get("instance_group") or [{}])[0].get("count", 1)))
        self.merge = config["parameters"]["fused_merge"]["string_value"] == "yes"
        self.ops = []
        for operator, params in steps:
            cls = getattr(importlib.import_module("towhee_ops." + operator["module"]),
                          operator["class"])
            params = dict(params, artifact_dir=_HERE)
            if ("num_threads" in {p.name for p in cls.params_spec}
                    and params.get("num_threads") is None):
                params["num_threads"] = cpu_threads_per_instance(instances)
            op = cls(**params)
            op.ensure_setup("cpu")
            for outcome in process_items(op, op.warmup_items()):
                pass
            self.ops.append((operator["name"], op))

    def execute(self, requests):
        # fused_merge "yes": the requests of one call (Triton's dynamic batcher) form one batch
        groups = [requests] if self.merge else [[request] for request in requests]
        responses = []
        for group in groups:
            responses.extend(self._run(group))
        return responses

    def _run(self, requests):
        first = self.ops[0][1]
        rows, owners = [], []
        for j, request in enumerate(requests):
            array = pb_utils.get_input_tensor_by_name(request, first.inputs[0].name).as_numpy()
            for value in array.reshape(array.shape[0]):
                rows.append((value,))
                owners.append(j)
        failed = {}
        for name, op in self.ops:
            keep = [k for k in range(len(rows)) if k not in failed]
            for k, result in zip(keep, process_items(op, [rows[k] for k in keep])):
                if isinstance(result, BaseException):
                    failed[k] = (name, result)
                else:
                    rows[k] = result
        last = self.ops[-1][1]
        responses = []
        for j in range(len(requests)):
            mine = [k for k in range(len(rows)) if owners[k] == j]
            failures = [ItemFailure.from_exception(failed[k][0], i, failed[k][1])
                        for i, k in enumerate(mine) if k in failed]
            if failures:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(
                        encode_failures(failures), pb_utils.TritonError.INVALID_ARG)))
                continue
            outputs = [pb_utils.Tensor(spec.name, stack_items([rows[k][i] for k in mine], spec))
                       for i, spec in enumerate(last.outputs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

    def finalize(self):
        self.ops = []
'''


# ------------------------------------------------------------------------ repositories
def fused_repo(repo_root: Path, model_name: str, out_root: Path, instances: int,
               merge: bool = False) -> Path:
    """A repository holding ONE python model ``model_name`` that runs every step of the
    generated repository at ``repo_root`` in one process (:data:`FUSED_MODEL_PY`); ``merge``:
    the requests Triton's dynamic batcher hands over together run as one batch."""
    from towhee_rt.triton import config as triton_config

    ensemble = triton_config.parse_pbtxt((repo_root / model_name / "config.pbtxt").read_text())
    steps, version = [], out_root / model_name / "1"
    version.mkdir(parents=True)
    for step in ensemble.ensemble_scheduling.step:
        step_dir = repo_root / step.model_name
        config = triton_config.parse_pbtxt((step_dir / "config.pbtxt").read_text())
        steps.append([json.loads(config.parameters["towhee_operator"].string_value),
                      json.loads(config.parameters["towhee_params"].string_value)])
        for entry in (step_dir / "1").iterdir():  # the shipped towhee_ops and model files
            target = version / entry.name
            if entry.name == "model.py" or target.exists():
                continue
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target)
        queue = config.dynamic_batching
    (version / "model.py").write_text(FUSED_MODEL_PY)
    fused = triton_config.pb.ModelConfig(name=model_name, backend="python",
                                         max_batch_size=ensemble.max_batch_size)
    fused.input.extend(ensemble.input)
    fused.output.extend(ensemble.output)
    for key, value in ensemble.parameters.items():  # input kind, limits, fingerprint
        fused.parameters[key].string_value = value.string_value
    fused.parameters["fused_steps"].string_value = json.dumps(steps)
    fused.parameters["fused_merge"].string_value = "yes" if merge else "no"
    group = fused.instance_group.add()
    group.count, group.kind = instances, triton_config.pb.ModelInstanceGroup.KIND_CPU
    fused.dynamic_batching.CopyFrom(queue)  # same queue policy as the steps
    (out_root / model_name / "config.pbtxt").write_text(triton_config.to_pbtxt(fused))
    return out_root


def resized_jpegs(items: Sequence[bytes], short_side: int) -> List[bytes]:
    """The client-side resize of shape (c): each image's shorter side to ``short_side``
    (INTER_AREA), re-encoded as JPEG quality 95."""
    import cv2

    out = []
    for data in items:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        scale = short_side / min(h, w)
        if scale < 1:
            image = cv2.resize(image, (round(w * scale), round(h * scale)),
                               interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        out.append(buf.tobytes())
    return out


def items_for_resized(items: Sequence[bytes], short_side: int) -> List[bytes]:
    """``items`` with each distinct image pre-resized once (:func:`resized_jpegs`)."""
    distinct = {id(item): item for item in items}
    resized = dict(zip(distinct, resized_jpegs(list(distinct.values()), short_side)))
    return [resized[id(item)] for item in items]
