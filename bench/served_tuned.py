"""The "served, tuned" rows: the bench's int8 repository after ``towhee_rt.tune``.

For one pipeline: build the repository of the recommended int8 settings (``bench/int8.py``),
run :func:`towhee_rt.tune.tune` on it twice (``objective='throughput'``, then ``'latency'``,
each into its own copy, on the bench's own inputs), serve each tuned copy and measure it like
every served row: the throughput copy over the client-concurrency sweep, the latency copy at 1
request in flight (the figure issue 15 compares with HF-style's p50). The tuner's wall time,
its chosen settings and its report go into the results.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from .common import IMAGES_DIR, SENTENCES, ResultRow, timed_client
from .served import measure_client, served_pipeline
from .served_config import ServedConfig

TUNED = "towhee_rt served, tuned for "
#: (objective, row label suffix, client concurrencies measured).
OBJECTIVES = (("throughput", "throughput", None), ("latency", "latency, 1 in flight", (1,)))


def _tuner_inputs(pipeline: str, workdir: Path) -> List[str]:
    if pipeline != "minilm":
        return [str(IMAGES_DIR)]
    path = workdir / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return [str(path)]


def tuned_rows(pipeline: str, config: ServedConfig, items: Sequence[Any],
               concurrencies: Sequence[int], budget_s: float,
               measured: Callable[[Callable[[], ResultRow], str], ResultRow],
               log: Callable[[str], None]) -> Tuple[List[ResultRow], Dict[str, Any]]:
    """The tuned rows of ``pipeline`` and what the tuner did (``{objective: {...}}``).

    ``measured(fn, what)`` runs one measurement (the caller's quiet-machine policy);
    ``budget_s`` is each tuner run's ``time_budget_s``.
    """
    import towhee_rt as towhee
    from towhee_rt.tune import tune

    rows: List[ResultRow] = []
    info: Dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-tuned-{pipeline}-"))
    try:
        pipe = served_pipeline(pipeline, config)
        repo = towhee.build_model_repo(pipe, tmp / "repo")
        pipe.close()
        inputs = _tuner_inputs(pipeline, tmp)
        for objective, suffix, fixed in OBJECTIVES:
            system = f"{TUNED}{suffix} ({config.label.rsplit(', ', 1)[0]})"
            log(f" tuning ({objective}, budget {budget_s:g} s)")
            started = time.perf_counter()
            result = tune(repo.path, out=tmp / f"tuned_{objective}", objective=objective,
                          time_budget_s=budget_s, inputs=inputs, report_dir=tmp / objective,
                          progress=lambda line: log("   " + line))
            wall = time.perf_counter() - started
            info[objective] = {"tuner_wall_s": round(wall, 1), "chosen": result.chosen_label,
                               "tuner_items_per_s": round(result.measurement.items_per_s, 1)}
            log(f"  tuner: {wall:.0f} s, chose {result.chosen_label}")
            settings = {"format": config.format, "tuned": objective,
                        "tuned_settings": result.chosen_label, "tuner_wall_s": round(wall, 1)}
            with towhee.serve(result.repository, grpc_port=0, http_port=0, metrics_port=0,
                              log_file=tmp / f"{objective}.log") as server:
                client, timer = timed_client(server.grpc_url, repo.model_name)
                try:
                    for c in fixed or concurrencies:
                        rows.append(measured(lambda: measure_client(
                            system, pipeline, client, timer, items, c,
                            settings={**settings, "config": system}), system))
                finally:
                    client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, info
