#!/usr/bin/env bash
# Run THERE (the GPU machine), from the repo root, with .gpu-wheels/ carried (see README.md):
#   bash benchmarks/gpu/run.sh
# Installs unifer and the plugins from .gpu-wheels/ into /tmp/site (no index there), then writes to
# $OUT: environment.txt, pytest.txt (torch, tensorrt and ncnn-on-Vulkan plugin tests, GPU ones
# included), gpu_compare.{json,md} and compare.log (compare.py), bench/{results.json,results.csv,
# report.md} and bench.log (unifer bench).
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
# ncnn's runtime is optional: built for one Python version (prepare.sh), its rows skip without it.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu-wheels/optional/*.whl || echo "ncnn's wheel does not install here"
export PYTHONPATH=/tmp/site

# ncnn on Vulkan needs the Vulkan loader (brought along where the image lacks it) and NVIDIA's
# Vulkan driver. The GPU machines mount the driver under /usr/local/nvidia, with its manifest
# there (the device README); elsewhere a container may have the driver's library but no manifest:
# then one is written for it.
if ! ldconfig -p | grep -q "libvulkan.so.1 "; then
  export LD_LIBRARY_PATH=$PWD/.gpu-wheels/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$nvidia_icd" ]; then
  export VK_DRIVER_FILES=$nvidia_icd VK_ICD_FILENAMES=$nvidia_icd
elif ! compgen -G "/usr/share/vulkan/icd.d/nvidia_icd*.json" >/dev/null &&
  ! compgen -G "/etc/vulkan/icd.d/nvidia_icd*.json" >/dev/null; then
  glx=$(ldconfig -p | awk '/libGLX_nvidia.so.0 / {print $NF; exit}')
  if [ -n "$glx" ]; then
    printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s", "api_version": "1.3"}}\n' \
      "$glx" >/tmp/nvidia_icd.json
    export VK_DRIVER_FILES=/tmp/nvidia_icd.json VK_ICD_FILENAMES=/tmp/nvidia_icd.json
  fi
fi

{
  date -u
  nvidia-smi
  python3 -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  python3 -c "from unifer._hardware import gpus; print('unifer._hardware.gpus():', gpus())"
  echo "Vulkan: VK_DRIVER_FILES=${VK_DRIVER_FILES:-} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>&1
  ldconfig -p | grep -E "libvulkan|libGLX_nvidia|libnvidia-gpucomp" || echo "no Vulkan/NVIDIA GLX libraries"
  python3 -m unifer backends
} >"$OUT/environment.txt" 2>&1

# The step limits add up to 540 s, inside the device's 600 s per call with the install above.
timeout 150 python3 -m pytest backends/torch/tests backends/tensorrt/tests \
  backends/ncnn/tests/test_vulkan.py backends/ncnn/tests/test_contract.py -q -p no:cacheprovider \
  -rs >"$OUT/pytest.txt" 2>&1
echo "pytest exit code $?" >>"$OUT/pytest.txt"
tail -5 "$OUT/pytest.txt"

# compare.py rewrites its files after every step: a cut-short run keeps what it measured.
timeout 240 python3 benchmarks/gpu/compare.py --out "$OUT" --model "$MODEL" --batches "$BATCHES" \
  >"$OUT/compare.log" 2>&1 || echo "compare.py exit code $?"
tail -3 "$OUT/compare.log"

# CPU against GPU in one bench: onnxruntime and torch on the CPU, torch on CUDA, ncnn on Vulkan.
targets=onnxruntime,torch@cpu,torch@cuda:0
if python3 -c "import ncnn" 2>/dev/null; then targets+=,ncnn@vulkan; fi
timeout 150 python3 -m unifer bench "builtin:$MODEL" --backend "$targets" \
  --threads "$(nproc)" --min-runs 30 --min-time 3 --rounds 1 --no-plots --out "$OUT/bench" \
  2>"$OUT/bench.log" || echo "unifer bench exit code $?"
