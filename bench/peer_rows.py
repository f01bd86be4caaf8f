"""The rows of the HTTP peers users pick instead of towhee_rt: Infinity and LitServe.

Called by ``bench/run.py`` after the PyTriton peer, with the same items and the same
concurrency sweep (plus 32 in flight in full runs, for the curves). For each peer setting:
start it, check its vectors against the fp32 reference (min cosine >= 0.99, stated in every
row's note and in ``results.json`` under ``peer_checks``), then measure each point through
``measured`` (run.py's quiet-machine wait and re-measure). A peer that cannot be installed or
started is a failure row with the reason, never a crash of the run.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

from .common import ResultRow
from .http_load import check_note, check_vectors, fp32_reference, measure_http

INFINITY = "Infinity peer (infinity-emb, all-MiniLM-L6-v2)"
LITSERVE = "LitServe peer (same ONNX + preprocessing, LitAPI batching)"
#: In-flight counts added to the run's own sweep in full runs (the curves go to 32).
EXTRA_CONCURRENCY = (32,)


def peer_concurrencies(concurrencies: Sequence[int], quick: bool) -> List[int]:
    """The run's sweep, plus :data:`EXTRA_CONCURRENCY` unless ``quick``."""
    return sorted(set(concurrencies) | (set() if quick else set(EXTRA_CONCURRENCY)))


def http_peer_rows(pipeline: str, model_file: str, items: Sequence[Any],
                   concurrencies: Sequence[int], quick: bool,
                   measured: Callable[[Callable[[], ResultRow], str], ResultRow],
                   add: Callable[[ResultRow], ResultRow], extra: Dict[str, Any],
                   log: Callable[[str], None]) -> None:
    """Measure LitServe (every pipeline) and Infinity (MiniLM) and ``add`` their rows."""
    sweep = peer_concurrencies(concurrencies, quick)
    try:
        inputs, reference, what = fp32_reference(pipeline, items[:8])
    except Exception as exc:  # noqa: BLE001 - without a reference no peer row is trusted
        _skip(f"{LITSERVE} / {INFINITY}", f"no fp32 reference: {type(exc).__name__}: {exc}",
              extra, log)
        return

    def run_peer(system: str, label: str, start, make_client, settings: Dict[str, Any]):
        log(f" peer: {system}, {label}")
        try:
            with start() as peer:
                client = make_client(peer)
                check = check_vectors(client, inputs, reference, what)
                extra.setdefault("peer_checks", {})[f"{system}, {label}"] = check
                log(f"  {check_note(check)}")
                for c in sweep:
                    m = add(measured(lambda: measure_http(
                        f"{system}, {label}", pipeline, client, items, c,
                        settings={**settings, "startup_s": peer["startup_s"],
                                  "min_cosine": check["min_cosine"]}), f"{system}, {label}"))
                    m.note = "; ".join(x for x in (check_note(check), m.note) if x)
        except Exception as exc:  # noqa: BLE001 - a peer that fails is a result too
            log(f"  FAILED: {type(exc).__name__}: {str(exc)[:500]}")
            extra.setdefault("failures", []).append(
                {"system": f"{system}, {label}", "error": f"{type(exc).__name__}: {exc}"[:2000]})

    _litserve(pipeline, model_file, quick, run_peer, extra, log)
    if pipeline == "minilm":
        _infinity(quick, run_peer, extra, log)
    else:
        extra.setdefault("skipped", []).append(
            {"system": INFINITY, "why": "no image model Infinity can load offline "
                                        "(see bench/README.md)"})


def _skip(system: str, why: str, extra: Dict[str, Any], log) -> None:
    log(f" peer: {system}: SKIPPED: {why}")
    extra.setdefault("failures", []).append({"system": system, "error": f"skipped: {why}"})


def _litserve(pipeline: str, model_file: str, quick: bool, run_peer, extra, log) -> None:
    from . import peer_litserve as lit

    try:
        import litserve  # noqa: F401
    except ImportError as exc:
        _skip(LITSERVE, f"litserve is not installed in this venv ({exc}); bench/run.sh "
                        "installs it", extra, log)
        return
    for label, workers, threads in lit.SETTINGS[:1] if quick else lit.SETTINGS:
        settings = {"format": "onnx", "workers_per_device": workers, "intra_op_threads": threads,
                    "batching": f"max_batch_size {lit.MAX_BATCH}, "
                                f"batch_timeout {lit.BATCH_TIMEOUT_S * 1000:g} ms",
                    "protocol": "HTTP JSON (base64 images)"}
        run_peer(LITSERVE, label,
                 lambda w=workers, t=threads: lit.start_peer(pipeline, model_file, w, t),
                 lambda peer: lit.client(pipeline, peer["url"]), settings)


def _infinity(quick: bool, run_peer, extra: Dict[str, Any], log) -> None:
    from . import peer_infinity as inf

    try:
        inf.python()
    except FileNotFoundError as exc:
        _skip(INFINITY, str(exc), extra, log)
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-infinity-"))
    try:
        variants = inf.QUICK_VARIANTS if quick else inf.VARIANTS
        model_dirs = None
        if any(v.onnx_file for v in variants):
            try:
                log(" peer: Infinity: exporting MiniLM to ONNX + int8 with optimum")
                model_dirs = inf.prepare_models(workdir)
            except Exception as exc:  # noqa: BLE001 - the torch variants can still run
                extra.setdefault("failures", []).append(
                    {"system": f"{INFINITY}, optimum", "error": f"{type(exc).__name__}: "
                                                                f"{exc}"[:2000]})
                log(f"  FAILED: {type(exc).__name__}: {str(exc)[:500]}")
                variants = [v for v in variants if not v.onnx_file]
        for v in variants:
            settings = {"engine": v.engine, "dtype": v.dtype if v.engine == "torch" else
                        ("int8" if v.onnx_file == inf.ONNX_INT8 else "float32"),
                        "max_batch": inf.BATCH_SIZE, "device": "cpu",
                        "flags": " ".join(v.args()), "protocol": "HTTP JSON (/embeddings)"}
            run_peer(INFINITY, v.label,
                     lambda v=v: inf.start_peer(v, model_dirs, workdir=workdir),
                     lambda peer: inf.client(peer["url"]), settings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
