"""Choose a model format per operator (format_priority, jit) and write its files.

For each format in ``format_priority`` the first one that is available here, exports, and
passes a parity check against the torch model is used; every skipped format is logged once with
its reason. torch comes last (``torch.compile`` first when ``jit`` is set, itself checked).
Weights that cannot be loaded are not a format problem: that error is raised, never skipped.
Nothing here changes the operator's params: :func:`select_format` returns the choice and the
verified runner, :func:`model_files` the files and params a served copy of the operator needs,
with its lock (where the weights came from, the sha256 of the shipped file, the preprocessing).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..backends.model_operator import ModelOperator
from ..backends.operator_base import OperatorParamError
from ..backends.format_runners import Runner, TorchRunner, make_file_runner
from ..backends.weights import file_sha256, jsonable
from ..errors import FormatError
from ..op_config import OpConfig
from . import cache, parity

log = logging.getLogger("towhee_rt")
WEIGHTS_FILE = "weights.safetensors"
MODEL_FILES = {"onnx": "model.onnx", "onnx_int8": "model_int8.onnx", "tensorrt": "model.plan",
               "tensorrt_fp16": "model.plan"}
_logged: set = set()
#: How an accuracy-gate failure starts (quantize.int8_runner) and how a refusal is flagged.
GATE_FAILED = "accuracy gate failed:"
REFUSED = "REFUSED"
#: Libraries whose versions a lock records (with torch), by the operator module they serve.
LOCK_LIBRARIES = ("torch", "timm", "open_clip_torch", "sentence-transformers", "transformers",
                  "huggingface_hub", "safetensors")


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A file an operator's served model directory needs: its name there and how to write it."""

    name: str
    write: Callable[[Path], None]


@dataclasses.dataclass(frozen=True)
class FormatChoice:
    """The format chosen for one operator, why others were skipped, and its parity error."""

    format: str
    #: The exported file (in the export cache) of the file formats.
    model_file: Optional[str] = None
    relative_error: Optional[float] = None
    min_cosine: Optional[float] = None
    #: How the model was made, when that is more than the format says (the int8 recipe).
    detail: Optional[str] = None
    skipped: Tuple[Tuple[str, str], ...] = ()
    #: The accuracy gate's verdict and figures on the held-out samples (lossy formats).
    gate: Optional[str] = None

    def refusal(self) -> Optional[str]:
        """Why a lossy format was refused by the accuracy gate (``None`` if none was), e.g.
        ``onnx_int8 refused by the accuracy gate: no int8 recipe keeps ...``."""
        for fmt, why in self.skipped:
            if why.startswith(GATE_FAILED):
                return f"{fmt} {REFUSED} by the accuracy gate: {why[len(GATE_FAILED):].strip()}"
        return None

    def summary(self) -> str:
        """E.g. ``onnx (rel. err 1.6e-07; skipped tensorrt: module not installed)``; a refusal
        by the accuracy gate comes first, in capitals."""
        text = self.format
        refusal = self.refusal()
        if refusal:
            text += f" [{refusal}]"
        if self.relative_error is not None:
            text += f" (parity rel. err {self.relative_error:.1e})"
        if self.detail:
            text += f" ({self.detail})"
        if self.gate:
            text += f" (accuracy gate {self.gate})"
        elif self.min_cosine is not None:
            text += f" (accuracy gate: min cosine to fp32 {self.min_cosine:.4f})"
        skipped = [(f, why) for f, why in self.skipped if not why.startswith(GATE_FAILED)]
        if skipped:
            text += "; skipped " + "; ".join(f"{f}: {why}" for f, why in skipped)
        return text


Samples = Optional[Callable[[], List[Dict[str, Any]]]]


def select_format(op: ModelOperator, config: OpConfig,
                  samples: Samples = None) -> Tuple[FormatChoice, Optional[Runner]]:
    """Pick ``op``'s format; return the choice and the runner that passed its checks.

    The runner is ``None`` for plain torch (the operator builds it in ``setup``).
    ``samples()`` returns model-input batches made from ``config.calibration_data`` by the
    pipeline's upstream operators (used by ``onnx_int8`` only, and only when it is tried).
    """
    skipped: List[Tuple[str, str]] = []
    for fmt in config.format_priority:
        if fmt == "torch":
            break
        try:
            choice, runner = _try_file_format(op, fmt, config, samples)
            return dataclasses.replace(choice, skipped=tuple(skipped)), runner
        except OperatorParamError:
            raise  # the weights or params are wrong: no format can help
        except FormatError as exc:
            _skip(op, skipped, fmt, str(exc))
        except Exception as exc:  # noqa: BLE001 - an unexpected failure also means "skip"
            _skip(op, skipped, fmt, _first_line(exc))
    if config.jit:
        try:
            compiled = TorchRunner(op.torch_module(), "cpu", compile=True)
            error = parity.check_parity(op, compiled)
            if config.device != "cpu":  # checked on the CPU; run where the operator runs
                compiled = TorchRunner(op.torch_module(), config.device, compile=True)
            return FormatChoice("torch_compile", relative_error=error,
                                skipped=tuple(skipped)), compiled
        except Exception as exc:  # noqa: BLE001 - compile errors come in many types
            _skip(op, skipped, f"jit={config.jit!r} (torch.compile)", _first_line(exc))
    return FormatChoice("torch", skipped=tuple(skipped)), None


def _try_file_format(op: ModelOperator, fmt: str, config: OpConfig,
                     samples: Samples) -> Tuple[FormatChoice, Runner]:
    if fmt == "onnx_int8":
        return _try_int8(op, config, samples)
    if fmt in ("tensorrt", "tensorrt_fp16"):
        from . import tensorrt_build

        reason = tensorrt_build.unavailable_reason(config.device_ids)
        if reason:
            raise FormatError(reason)
        path, precision = tensorrt_build.build_engine(op, config, fp16=fmt.endswith("fp16")), \
            "fp16" if fmt.endswith("fp16") else "fp32"
        device = config.device
    elif fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise FormatError("module onnxruntime not installed (pip install onnxruntime)")
        from .onnx_export import export_onnx

        path, precision, device = export_onnx(op), "fp32", config.device
    else:
        raise FormatError(f"format {fmt!r} is not supported by this operator")
    try:
        runner = make_file_runner("tensorrt" if fmt.startswith("tensorrt") else fmt, str(path),
                                  device)
    except Exception as exc:  # noqa: BLE001 - the runtime refused the file
        raise FormatError(f"could not load {path.name}: {_first_line(exc)}") from None
    error = parity.check_parity(op, runner, precision)
    return FormatChoice(fmt, str(path), error), runner


def _try_int8(op: ModelOperator, config: OpConfig,
              samples: Samples) -> Tuple[FormatChoice, Runner]:
    from . import quantize
    from .onnx_export import export_onnx

    batches = samples() if samples and config.calibration_data else []
    if not batches:
        log.warning("%s: onnx_int8: no calibration_data given; calibrating on %d random inputs. "
                    "Pass pipeline_config(calibration_data=[...]) with real samples (some are "
                    "held out for the accuracy gate)", op.name, quantize.RANDOM_SAMPLES)
        batches = quantize.random_samples(op)
    model = quantize.int8_runner(op, export_onnx(op), batches, gate=config.gate)
    return FormatChoice("onnx_int8", str(model.path), min_cosine=model.min_cosine,
                        detail=f"{model.recipe.name}: {model.recipe.description}",
                        gate=model.verdict.text()), model.runner


def _skip(op: ModelOperator, skipped: list, fmt: str, reason: str) -> None:
    skipped.append((fmt, reason))
    key = (op.name, repr(op.params.get("model_name")), fmt, reason)
    if key not in _logged:
        _logged.add(key)
        log.warning("%s: %s skipped: %s", op.name, fmt, reason)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def model_files(op: ModelOperator, choice: FormatChoice, params: Mapping[str, Any]
                ) -> Tuple[Dict[str, Any], Tuple[ModelFile, ...]]:
    """``params`` (the user's) completed with what a served copy of ``op`` needs to run in the
    chosen format from the repository alone, and the files it needs.

    The torch formats ship the state dict as ``weights.safetensors`` (so served weights equal
    local ones, whether pretrained, from a checkpoint or random); the others ship the exported
    ONNX file or TensorRT engine, which holds the weights (so ``checkpoint_path`` is dropped).
    Either way the served copy does not download (``pretrained=False``), reads the config and
    tokenizer files ``op`` ships (``model_dir``) and its preprocessing from ``lock``:
    :func:`lock_entry`. Nothing is written here.
    """
    served = {k: v for k, v in params.items() if k != "checkpoint_path"}
    served["format"] = choice.format
    served.update(op.served_params())
    files = [ModelFile(name, write) for name, write in sorted(op.served_files().items())]
    if choice.model_file:
        name, source = MODEL_FILES[choice.format], choice.model_file
        served["model_file"] = name
        sha256 = _file_sha256(source)
        files.append(ModelFile(name, lambda target: shutil.copy2(source, target)))
    else:
        name, sha256 = WEIGHTS_FILE, weights_sha256(op)
        served["checkpoint_path"] = name
        files.append(ModelFile(name, lambda target: save_weights(op, target, sha256)))
    served["lock"] = lock_entry(op, choice, name, sha256)
    return served, tuple(files)


def lock_entry(op: ModelOperator, choice: FormatChoice, file: str, sha256: str
               ) -> Dict[str, Any]:
    """What a repository pins about one model (JSON): the model and where its weights came from
    (``source``: ``hf-hub`` with ``repo_id`` and ``revision``, the commit; ``package``,
    ``local-dir``, ``checkpoint`` or ``random``), the shipped ``file`` with its ``sha256``, the
    ``format``, the ``preprocess`` config and the library versions."""
    info = op.lock_info()
    entry = {"operator": op.name, "model_name": op.params.get("model_name"), **info,
             "format": choice.format, "file": file, "sha256": sha256,
             "libraries": dict(cache.library_versions(LOCK_LIBRARIES))}
    return jsonable(entry)


def _state_bytes(op: ModelOperator) -> bytes:
    """The module's state dict as safetensors bytes: the same bytes for the same weights."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone()
             for k, v in op.torch_module().state_dict().items()}
    return save(state)


def weights_sha256(op: ModelOperator) -> str:
    """sha256 of the ``weights.safetensors`` :func:`save_weights` writes for ``op``."""
    return hashlib.sha256(_state_bytes(op)).hexdigest()


def save_weights(op: ModelOperator, target: Path, sha256: Optional[str] = None) -> None:
    """Write ``op``'s state dict to ``target``; with ``sha256``, check it is the locked file."""
    data = _state_bytes(op)
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"{op.name}: the weights changed since the pipeline was built (their "
                           f"sha256 no longer matches the lock); build the pipeline again")
    Path(target).write_bytes(data)


_hashed: Dict[Tuple[str, float, int], str] = {}


def _file_sha256(path: str) -> str:
    """sha256 of an exported file, remembered per path, mtime and size (exports are reused)."""
    stat = Path(path).stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _hashed:
        _hashed[key] = file_sha256(str(path))
    return _hashed[key]
