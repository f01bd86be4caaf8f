"""The tuner's command line, shared by ``python -m towhee_rt.tune`` and ``towhee-rt tune``::

    python -m towhee_rt.tune REPO [--out DIR] [--objective throughput|latency]
        [--p99-budget-ms MS] [--max-instances N] [--concurrency N] [--time-budget S]
        [--inputs DIR_OR_FILES ...] [--report-dir DIR] [--model NAME]

Exit codes: 0 done (settings written, report written), 1 the server or a model failed, or no
move could be measured within the time budget (nothing written), 2 a usage or configuration
error (a time budget too small to conclude, ...), 130 interrupted (the server is stopped;
nothing is written).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from ..cli_args import Parser, positive_float, positive_int
from ..errors import ConfigError, TowheeRTError
from .search import OBJECTIVES
from .tuner import DEFAULT_TIME_BUDGET_S, _tune

DESCRIPTION = ("Search a model repository's serving settings (instances, threads, dynamic "
               "batching, requests in flight) on the real server and write the best ones back; "
               "the chosen requests in flight are recorded in the pipeline's config, where "
               "towhee_rt.Client and dc(...).remote() take them as their default concurrency.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the tuner's options to ``parser``."""
    parser.add_argument("repository", type=Path, help="the model repository to tune")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write the tuned settings into a copy at DIR (must not exist) "
                             "instead of into REPO")
    parser.add_argument("--objective", choices=OBJECTIVES, default="throughput",
                        help="most items/s, or lowest p50 latency (default %(default)s)")
    parser.add_argument("--p99-budget-ms", type=positive_float, metavar="MS",
                        help="never choose a point whose p99 latency is above MS")
    parser.add_argument("--max-instances", type=positive_int, metavar="N",
                        help="most model instances of all steps together (default: twice the "
                             "cores, or the repository's own count if higher)")
    parser.add_argument("--concurrency", type=positive_int, metavar="N",
                        help="requests in flight, fixed (default: searched for throughput, 1 "
                             "for latency)")
    parser.add_argument("--time-budget", type=positive_float, default=DEFAULT_TIME_BUDGET_S,
                        metavar="S",
                        help="seconds for the search (server start-up and writing come on "
                             "top; at least 4 points of 3.5 windows: 28 s at --window 2; "
                             "default %(default)g)")
    parser.add_argument("--inputs", nargs="+", metavar="DIR_OR_FILES",
                        help="what to send: image files, or text files of one input per line "
                             "(default: the sample photos chelsea.jpg and coffee.jpg, or "
                             "built-in sentences of varied length)")
    parser.add_argument("--report-dir", type=Path, metavar="DIR",
                        help="where tune_report.md/.json/.png go (default: inside the tuned "
                             "repository)")
    parser.add_argument("--model", metavar="NAME",
                        help="the pipeline (ensemble) to tune when REPO holds several")
    parser.add_argument("--window", type=positive_float, default=2.0, metavar="S",
                        help="seconds per measurement window (default %(default)g)")


def run(args: argparse.Namespace, prog: str = "python -m towhee_rt.tune") -> int:
    """Tune as ``args`` say (``prog``: how the command was called, for the report); the
    exit code."""
    command = " ".join([prog] + [shlex.quote(a) for a in sys.argv[1:]])
    try:
        result = _tune(args.repository, out=args.out, model=args.model,
                       objective=args.objective, p99_budget_ms=args.p99_budget_ms,
                       max_instances=args.max_instances, concurrency=args.concurrency,
                       time_budget_s=args.time_budget, inputs=args.inputs,
                       report_dir=args.report_dir, window_s=args.window, max_windows=8,
                       max_point_s=40.0, command=command, progress=None, cli=True)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TowheeRTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the server is stopped and no settings were written",
              file=sys.stderr)
        return 130
    if not result.written:
        print(f"error: {result.outcome}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None, prog: str = "python -m towhee_rt.tune") -> int:
    """``python -m towhee_rt.tune``: parse ``argv`` (default ``sys.argv[1:]``) and tune."""
    parser = Parser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv), prog)
