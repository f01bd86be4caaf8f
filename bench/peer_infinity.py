"""The Infinity peer (``infinity-emb``, michaelfeil/infinity) serving the same MiniLM weights.

Infinity is what many users pick to serve sentence embeddings on a CPU: ``infinity_emb v2``
with an OpenAI-compatible ``POST /embeddings``, its own dynamic batching (``--batch-size``)
and two CPU engines:

- ``torch``: sentence-transformers on torch (``--dtype float32``, or ``--dtype int8``: torch's
  dynamic int8 quantization of the linear layers);
- ``optimum``: ONNX Runtime through Hugging Face optimum, on an ONNX file found in the model
  directory (it prefers a ``*quantize*`` file on CPU: optimum's dynamic int8 recipe, the one
  sentence-transformers ships as ``model_qint8_avx512_vnni.onnx``); the fp32 file is
  graph-optimized the way Infinity would do it (see :func:`prepare`); mean pooling is asked
  for explicitly (its default for ONNX is the CLS token, wrong for MiniLM).

It serves the all-MiniLM-L6-v2 directory the project already uses
(``towhee_rt.backends.text_embedding.bundled_minilm_dir()``), offline (``HF_HUB_OFFLINE=1``).
For the optimum engine, :func:`prepare` (run with Infinity's own interpreter) exports that
directory to ONNX with optimum and quantizes it, into one directory per variant under a work
directory (Infinity writes its optimized graph beside the file it loads).

Infinity pins packages the project's ``.venv`` cannot take (transformers 4.x,
huggingface_hub 0.x), so it lives in ``bench/.venv-infinity`` (created by ``bench/run.sh``,
see :data:`VENV`), which sees ``.venv``'s packages through a ``.pth`` file but installs its
own versions in front of them. No image model: see bench/README.md.

    python -m bench.peer_infinity prepare --source DIR --out WORKDIR   # in bench/.venv-infinity
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

VENV = Path(__file__).resolve().parent / ".venv-infinity"
SERVED_NAME = "minilm"
BATCH_SIZE = 32
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model_quantized.onnx"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One Infinity setting measured."""

    label: str
    engine: str  # torch | optimum
    dtype: str = "float32"  # the --dtype flag (torch engine)
    onnx_file: Optional[str] = None  # the ONNX file the optimum engine gets

    def args(self) -> List[str]:
        """``infinity_emb v2`` flags of this setting."""
        out = ["--engine", self.engine, "--device", "cpu", "--batch-size", str(BATCH_SIZE)]
        if self.engine == "torch":
            out += ["--dtype", self.dtype]
        else:  # the graph is optimized by prepare(); see there
            out += ["--pooling-method", "mean", "--onnx-disable-optimize"]
        return out


#: The settings tried; ``--quick`` measures :data:`QUICK_VARIANTS` only.
VARIANTS = (
    Variant("torch fp32", "torch"),
    Variant("torch int8 (--dtype int8)", "torch", dtype="int8"),
    Variant("optimum ONNX fp32 (graph-optimized)", "optimum", onnx_file=ONNX_FP32),
    Variant("optimum ONNX int8 (model_quantized.onnx)", "optimum", onnx_file=ONNX_INT8),
)
QUICK_VARIANTS = (VARIANTS[0], VARIANTS[2])


# ---------------------------------------------------------------- the wire format (pure)
def request_body(text: Any, model: str = SERVED_NAME) -> Dict[str, Any]:
    """The OpenAI-style ``/embeddings`` body for one sentence."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8")
    return {"model": model, "input": [text]}


def vectors_from_response(body: Dict[str, Any]) -> List[np.ndarray]:
    """``{"data": [{"embedding": [...], "index": i}, ...]}`` -> vectors in input order."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(
            isinstance(d, dict) and isinstance(d.get("embedding"), list) for d in data):
        raise ValueError(f"expected an OpenAI-style embeddings response, got {str(body)[:200]}")
    ordered = sorted(data, key=lambda d: d.get("index", 0))
    return [np.asarray(d["embedding"], dtype=np.float32) for d in ordered]


def vector_from_response(body: Dict[str, Any]) -> np.ndarray:
    """The single vector of a one-sentence response."""
    vectors = vectors_from_response(body)
    if len(vectors) != 1:
        raise ValueError(f"expected one embedding, got {len(vectors)}")
    return vectors[0]


# ----------------------------------------------------- model directories (Infinity's venv)
def _link_tree(source: Path, out: Path) -> None:
    """``out`` mirrors ``source`` with symlinked files (nothing is written into the source)."""
    for path in source.rglob("*"):
        target = out / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(path)


def prepare(source: Path, workdir: Path) -> Dict[str, str]:
    """Export ``source`` to ONNX with optimum, graph-optimize it (fp32) and quantize it
    (optimum's dynamic int8 recipe for this CPU), and lay out one model directory per ONNX
    variant; returns ``{file: dir}``.
    Runs in Infinity's venv (optimum's exporter needs its transformers)."""
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig, OptimizationConfig

    export = workdir / "export"
    main_export(str(source), output=str(export), task="feature-extraction",
                library_name="transformers", do_validation=False)
    # The graph optimization Infinity's optimum engine asks for on CPU (level 99, transformer
    # fusions), done here: Infinity 0.0.78's own call passes optimize_with_onnxruntime_only,
    # which optimum 2.x no longer takes, and falls back to the unoptimized graph.
    model = ORTModelForFeatureExtraction.from_pretrained(str(export), file_name=ONNX_FP32)
    optimized = workdir / "optimized"
    ORTOptimizer.from_pretrained(model).optimize(
        optimization_config=OptimizationConfig(optimization_level=99, optimize_for_gpu=False),
        save_dir=str(optimized))
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    recipe = (AutoQuantizationConfig.avx512_vnni if "avx512_vnni" in flags
              else AutoQuantizationConfig.avx2)(is_static=False, per_channel=False)
    quantized = workdir / "quantized"
    ORTQuantizer.from_pretrained(str(export), file_name=ONNX_FP32).quantize(
        save_dir=str(quantized), quantization_config=recipe)
    out = {}
    for name, origin in ((ONNX_FP32, optimized / "model_optimized.onnx"),
                         (ONNX_INT8, quantized / ONNX_INT8)):
        if not origin.exists():
            raise FileNotFoundError(f"optimum did not write {origin}")
        variant_dir = workdir / name.replace(".onnx", "")
        _link_tree(source, variant_dir)
        shutil.copy2(origin, variant_dir / name)
        out[name] = str(variant_dir)
    return out


# ------------------------------------------------------------------------ the parent side
def python() -> Path:
    """Infinity's interpreter; ``FileNotFoundError`` naming ``bench/run.sh`` when missing."""
    exe = VENV / "bin" / "python"
    if not exe.exists() or not (VENV / ".installed").exists():
        raise FileNotFoundError(f"bench/{VENV.name} is missing or its install did not finish: "
                                f"`bash bench/run.sh` creates it with infinity-emb (its "
                                f"install.log says why an install failed)")
    return exe


def _env(workdir: Path, hf_home: str = "hf-home") -> Dict[str, str]:
    from .common import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1",
               INFINITY_ANONYMOUS_USAGE_STATS="0", HF_HOME=str(workdir / hf_home),
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", ""))
    if not env["OMP_NUM_THREADS"]:
        env.pop("OMP_NUM_THREADS")
    return env


def prepare_models(workdir: Path, timeout: float = 600.0) -> Dict[str, str]:
    """Run :func:`prepare` in Infinity's venv on the bundled MiniLM; ``{onnx file: dir}``."""
    from towhee_rt.backends.text_embedding import bundled_minilm_dir

    from .common import ROOT

    log = workdir / "prepare.log"
    with open(log, "wb") as f:
        proc = subprocess.run([str(python()), "-m", "bench.peer_infinity", "prepare",
                               "--source", str(bundled_minilm_dir()), "--out", str(workdir)],
                              cwd=ROOT, env=_env(workdir), stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout)
    if proc.returncode != 0:
        from .peer_process import log_tail

        raise RuntimeError(f"exporting MiniLM to ONNX for Infinity failed:\n{log_tail(str(log))}")
    return {name: str(workdir / name.replace(".onnx", "")) for name in (ONNX_FP32, ONNX_INT8)}


@contextlib.contextmanager
def start_peer(variant: Variant, model_dirs: Optional[Dict[str, str]] = None,
               workdir: Optional[Path] = None, ready_timeout: float = 300.0,
               log_file: Optional[str] = None) -> Iterator[Dict[str, Any]]:
    """Start ``infinity_emb v2`` with ``variant`` on a free loopback port; yield ``{url, pid,
    startup_s, ...}``; stop it (its process group) on exit. ``model_dirs`` comes from
    :func:`prepare_models` (needed for the optimum variants)."""
    from towhee_rt.backends.text_embedding import bundled_minilm_dir

    from .common import ROOT
    from .peer_process import child_server, free_ports

    exe = python().parent / "infinity_emb"
    if variant.onnx_file:
        if not model_dirs or variant.onnx_file not in model_dirs:
            raise ValueError(f"{variant.label}: needs prepare_models() first")
        # Infinity 0.0.78 hands optimum the ONNX file's path as globbed from --model-id, and
        # optimum wants it relative to the model directory: run in that directory with ".".
        model, cwd = ".", model_dirs[variant.onnx_file]
    else:
        model, cwd = str(bundled_minilm_dir()), str(ROOT)
    own_workdir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-infinity-")) if own_workdir else workdir
    # Its own HF_HOME per variant: Infinity caches the optimized graph there by model path.
    env = _env(workdir, "hf-home-" + (variant.onnx_file or variant.engine).replace(".", "_"))
    port = free_ports(1)[0]
    argv = [str(exe), "v2", "--model-id", model, "--served-model-name", SERVED_NAME,
            *variant.args(), "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]
    base = f"http://127.0.0.1:{port}"
    try:
        with child_server("infinity", argv, base + "/health", env, cwd, ready_timeout,
                          log_file=log_file) as info:
            yield {**info, "url": base + "/embeddings", "argv": argv[1:]}
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def client(url: str):
    """An :class:`bench.http_load.HttpJsonClient` for Infinity's ``/embeddings`` at ``url``."""
    from .http_load import HttpJsonClient

    return HttpJsonClient(url, request_body, vector_from_response)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="export + quantize MiniLM for the optimum engine")
    prep.add_argument("--source", type=Path, required=True)
    prep.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(prepare(args.source, args.out), flush=True)


if __name__ == "__main__":
    main()
