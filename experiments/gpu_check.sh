#!/usr/bin/env bash
# The GPU check: quickstart with client-gpus = 0.25, bench_simulation at 100 clients on the GPU,
# and one showcase-size round; at most 8 minutes on a machine with one CUDA GPU. Writes
# OUT/gpu_check.csv (with the GPU's name) and a log per job. Without a CUDA GPU it runs a cut-down
# CPU fallback of the same jobs (a check of the script, not a measurement).
#   experiments/gpu_check.sh [OUT]          (default OUT: runs/gpu_check)
# PYTHON picks the interpreter (default: .venv/bin/python after `make setup`, else python3);
# GPU_CHECK_BUDGET_S the budget in seconds (480 on a GPU); GPU_CHECK_JOBS a comma-separated subset.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu_check}"
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L || echo "nvidia-smi: not found"
exec "$py" experiments/gpu_check.py --out "$out" ${GPU_CHECK_BUDGET_S:+--budget-s "$GPU_CHECK_BUDGET_S"} \
    ${GPU_CHECK_JOBS:+--jobs "$GPU_CHECK_JOBS"}
