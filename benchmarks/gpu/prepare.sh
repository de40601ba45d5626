#!/usr/bin/env bash
# Run HERE (the development machine), before the GPU run: build the wheels the GPU machine lacks into
# .gpu-wheels/ (git-ignored), which the device call carries. The GPU machine's image already has
# torch (CUDA), onnx, onnxruntime, numpy, click and pytest; it cannot reach any package index.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu-wheels && mkdir .gpu-wheels
for project in . backends/onnxruntime backends/torch backends/tensorrt; do
  uv build --quiet --wheel --out-dir .gpu-wheels "$project"
done
# platformdirs is the one core dependency the image lacks (pure Python).
python3 -m pip download --quiet --no-deps --only-binary=:all: -d .gpu-wheels "platformdirs>=3"
ls -l .gpu-wheels
du -sh .gpu-wheels
