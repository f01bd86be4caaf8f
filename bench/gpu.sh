#!/usr/bin/env bash
# The GPU checks in one command (issue 21), for a machine with an NVIDIA GPU:
#   bash bench/gpu.sh            # install the gpu+test extras, run the checks, write
#                                # bench/results/gpu.md (logs in bench/results/gpu-logs/)
#   bash bench/gpu.sh --dry-run  # say what would run, install and run nothing
# Without a GPU (`nvidia-smi -L` fails) it lists the checks that need one and exits 0 having
# installed nothing ("skipped cleanly"). Every step has its own `timeout`, cut to what is left
# of GPU_SH_BUDGET seconds (default 450), so the whole script ends in under 8 minutes. Exits 1
# when a step failed or timed out (bench/results/gpu.md says which), else 0.
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=${GPU_SH_BUDGET:-450}
RESULTS=bench/results
LOGS=$RESULTS/gpu-logs
REPORT=$RESULTS/gpu.md
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "[gpu] unknown argument: $arg (use --dry-run)" >&2; exit 2 ;;
  esac
done

CHECKS=(
  "install: pip install -e '.[gpu,test]' into .venv (created with bash .ci/setup when missing): onnxruntime-gpu, tensorrt, cuda-python"
  "gpu tests: pytest -m gpu tests (every test marked gpu, e.g. TensorRT engine vs torch on the GPU)"
  "clip bench: python -m bench.run --quick --pipelines clip --no-profile --tune-budget 0 (CLIP image pipeline vs the HF-style baseline; bench/run.py has no GPU mode, so it measures what it measures on CPU)"
)
list_checks() { local c; for c in "${CHECKS[@]}"; do echo "  - $c"; done; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "[gpu] no NVIDIA GPU here (nvidia-smi -L failed or is missing): skipped cleanly."
  echo "[gpu] these checks need one:"
  list_checks
  exit 0
fi
if [ "$DRY_RUN" = 1 ]; then
  echo "[gpu] GPU found ($(nvidia-smi -L | head -1)); would run, within ${BUDGET}s:"
  list_checks
  exit 0
fi

mkdir -p "$LOGS"
START=$SECONDS
ROWS=()       # markdown table rows
NOT_RUN=()    # what could not run, and why

# run_step NAME MAX_SECONDS COMMAND...: runs under timeout (cut to the budget left), logs to
# $LOGS/NAME.log, adds a row; returns the command's status (124: timed out).
run_step() {
  local name=$1 max=$2; shift 2
  local left=$(( BUDGET - (SECONDS - START) - 10 ))
  local limit=$(( max < left ? max : left ))
  if [ "$limit" -lt 20 ]; then
    ROWS+=("| $name | skipped | 0 | out of time (budget ${BUDGET}s) |")
    NOT_RUN+=("$name: out of time (GPU_SH_BUDGET=${BUDGET}s)")
    return 125
  fi
  echo "[gpu] $name (timeout ${limit}s): $*"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  local took=$(( SECONDS - t0 )) status=pass
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="timeout (${limit}s)"
  elif [ "$rc" != 0 ]; then status="fail (exit $rc)"; fi
  local last
  last=$(grep -v '^\s*$' "$LOGS/$name.log" | tail -1 | cut -c1-160 | tr '|' '/')
  ROWS+=("| $name | $status | $took | \`$last\` |")
  echo "[gpu] $name: $status in ${took}s"
  return "$rc"
}

# 1. install
if [ -x .venv/bin/python ]; then
  run_step install 240 .venv/bin/python -m pip install -q -e '.[gpu,test]'
else
  run_step setup 240 bash .ci/setup && run_step install 180 \
    .venv/bin/python -m pip install -q -e '.[gpu,test]'
fi
install_rc=$?
if [ ! -x .venv/bin/python ]; then
  NOT_RUN+=("gpu tests and clip bench: no .venv (setup failed: $LOGS/setup.log)")
else
  [ "$install_rc" = 0 ] || NOT_RUN+=("the gpu extra did not install (see $LOGS/install.log): tests needing tensorrt/onnxruntime-gpu skip")
  # 2. every test marked gpu (exit 5: none collected)
  run_step gpu-tests 150 .venv/bin/python -m pytest -m gpu -rs -q -p no:cacheprovider tests
  tests_rc=$?
  [ "$tests_rc" = 5 ] && NOT_RUN+=("gpu tests: pytest collected none")
  while read -r line; do NOT_RUN+=("gpu test skipped: $line"); done \
    < <(grep -h '^SKIPPED' "$LOGS/gpu-tests.log" 2>/dev/null)
  # 3. the CLIP image pipeline against the HF-style baseline (its own output folder)
  run_step clip-bench 200 .venv/bin/python -m bench.run --quick --pipelines clip \
    --no-profile --tune-budget 0 --out "$RESULTS/gpu-clip"
fi
NOT_RUN+=("a GPU mode of the bench: bench/run.py has none (no device option); the CLIP rows are what it measures, on CPU, beside the HF-style baseline measured the same way")
NOT_RUN+=("perf_analyzer / Model Analyzer / genai-perf: PyPI's perf-analyzer needs glibc >= 2.39 (see DESIGN.md)")

versions=$(timeout 60 .venv/bin/python - 2>&1 <<'EOF'
from importlib import metadata
for name in ("towhee_rt", "torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "tensorrt",
             "cuda-python", "nvidia-dali-cuda120", "nvidia-pytriton", "tritonclient", "numpy"):
    try:
        print(f"- {name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"- {name}: not installed")
try:
    import torch
    print(f"- torch.cuda.is_available() = {torch.cuda.is_available()}, "
          f"torch.version.cuda = {torch.version.cuda}")
except Exception as exc:
    print(f"- torch: {exc!r}")
try:
    import onnxruntime
    print(f"- onnxruntime providers: {onnxruntime.get_available_providers()}")
except Exception as exc:
    print(f"- onnxruntime: {exc!r}")
EOF
) || versions="(could not read package versions)"

{
  echo "# GPU checks ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo "Written by \`bash bench/gpu.sh\` in $(( SECONDS - START )) s (budget ${BUDGET} s); logs in \`$LOGS/\`."
  echo
  echo "GPU: \`$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)\`"
  echo "(\`$(nvidia-smi -L 2>&1 | head -1)\`)"
  echo
  echo "| step | result | seconds | last log line |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  if [ -f "$RESULTS/gpu-clip/results.md" ]; then
    echo "CLIP bench tables: \`$RESULTS/gpu-clip/results.md\`."
    echo
  fi
  echo "## Versions"
  echo
  echo "$versions"
  echo
  echo "## Could not run"
  echo
  for line in "${NOT_RUN[@]}"; do echo "- $line"; done
} > "$REPORT"
echo "[gpu] wrote $REPORT"
# Non-zero when a step failed or timed out (the report says which); timings never gate.
if printf '%s\n' "${ROWS[@]}" | grep -q '| fail\|| timeout'; then exit 1; fi
exit 0
