#!/usr/bin/env bash
# Run THERE (the GPU machine), from the repo root, with .gpu-wheels/ carried (see README.md):
#   bash benchmarks/gpu/run.sh
# Installs unifer and the plugins from .gpu-wheels/ into /tmp/site (no index there), then writes to
# $OUT: environment.txt, pytest.txt (torch and tensorrt plugin tests, GPU ones included),
# gpu_compare.{json,md} (compare.py) and bench/{results.json,results.csv,report.md} (unifer bench).
# Each step has its own time limit so that one hang cannot eat the whole device lease.
# MODEL (default arcface-r100) and BATCHES (default 1,32) shrink a dry run on a CPU machine.
set -uo pipefail
OUT=${OUT:-/tmp/unifer-gpu-out}
MODEL=${MODEL:-arcface-r100}
BATCHES=${BATCHES:-1,32}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 UNIFER_CACHE_DIR=/tmp/unifer-cache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu-wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site

{
  date -u
  nvidia-smi
  python3 -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  python3 -c "from unifer._hardware import gpus; print('unifer._hardware.gpus():', gpus())"
  python3 -m unifer backends
} >"$OUT/environment.txt" 2>&1

timeout 240 python3 -m pytest backends/torch/tests backends/tensorrt/tests -q -p no:cacheprovider \
  -rs >"$OUT/pytest.txt" 2>&1
echo "pytest exit code $?" >>"$OUT/pytest.txt"
tail -5 "$OUT/pytest.txt"

timeout 300 python3 benchmarks/gpu/compare.py --out "$OUT" --model "$MODEL" --batches "$BATCHES" \
  || echo "compare.py exit code $?"

timeout 300 python3 -m unifer bench "builtin:$MODEL" --backend onnxruntime --backend torch \
  --threads "$(nproc)" --min-runs 30 --min-time 3 --rounds 1 --no-plots --out "$OUT/bench" \
  || echo "unifer bench exit code $?"
