#!/usr/bin/env bash
# One command for issue 5's comparison: set up .venv, make sure the bench extras are there,
# then run every system on this machine and write bench/results/ (see bench/README.md).
#   bash bench/run.sh                      # full run (< 15 min on 2 cores)
#   bash bench/run.sh --quick              # a smoke run (~3 min)
#   bash bench/run.sh --pipelines resnet50 # one pipeline
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
if ! .venv/bin/python -c 'import matplotlib, pytest_benchmark' 2>/dev/null \
    || [ ! -x .venv/bin/py-spy ]; then
  echo "[bench] installing the bench extras (matplotlib, pytest-benchmark, py-spy)"
  .venv/bin/python -m pip install -q matplotlib pytest-benchmark py-spy
fi
exec .venv/bin/python -m bench.run "$@"
