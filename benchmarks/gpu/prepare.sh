#!/usr/bin/env bash
# Run HERE (the development machine), before the GPU run: build the wheels the GPU machine lacks into
# .gpu-wheels/ (git-ignored), which the device call carries. The GPU machine's image already has
# torch (CUDA), onnx, onnxruntime, numpy, click and pytest; it cannot reach any package index.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu-wheels && mkdir -p .gpu-wheels/optional .gpu-wheels/lib
for project in . backends/onnxruntime backends/torch backends/tensorrt backends/ncnn; do
  uv build --quiet --wheel --out-dir .gpu-wheels "$project"
done
# platformdirs is the one core dependency the image lacks (pure Python).
python3 -m pip download --quiet --no-deps --only-binary=:all: -d .gpu-wheels "platformdirs>=3"
# Optional there (run.sh goes on without them): ncnn's runtime for the image's Python 3.12 (11 MB),
# for ncnn on Vulkan, and the Vulkan loader, which the image may lack (Debian's; 0.5 MB).
ncnn_version=$(uv run --locked python -c "import importlib.metadata as m; print(m.version('ncnn'))")
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 -d .gpu-wheels/optional "ncnn==$ncnn_version"
loader=$(ldconfig -p | awk '/libvulkan.so.1 .*x86-64/ {print $NF; exit}')
if [ -n "$loader" ]; then
  cp -L "$loader" .gpu-wheels/lib/libvulkan.so.1
else
  echo "no Vulkan loader here to bring along (apt-get install libvulkan1)"
fi
ls -l .gpu-wheels
du -sh .gpu-wheels
