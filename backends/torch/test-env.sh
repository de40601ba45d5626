#!/usr/bin/env bash
# Create the torch backend's own environment (.venv-torch at the repo root) and run its tests.
#
# backends/torch is not in the repo's uv workspace: uv would resolve "torch" to the multi-GB CUDA
# build. This machine's pip finds a CPU wheel of torch 2.13.0 in its local wheel store (pip is
# configured with find-links); elsewhere install the CPU build with
#     pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# and on a CUDA machine a CUDA build (https://pytorch.org/get-started/locally/).
#
# Usage, from anywhere:  backends/torch/test-env.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=.venv-torch
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

# torch first, pinned, so that nothing below pulls another build. TORCH_INDEX_URL picks the build
# where no local wheel store provides one, e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (without it, pip on Linux takes PyPI's CUDA build: several GB).
"${PIP[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
# unifer, the plugin with its ONNX reader, onnxruntime (the ONNX reference the parity tests compare
# against) and the test tools.
"${PIP[@]}" -e . -e "backends/torch[onnx]" -e backends/onnxruntime "pytest>=8" "onnx>=1.16"
# silero-vad only for the ONNX files it ships (third-party models the converter must refuse by
# name); its own dependencies (torchaudio, ...) are not needed for that.
"${PIP[@]}" --no-deps "silero-vad==6.2.3"

# The root pytest configuration applies (markers, strict warnings); only this plugin's tests run.
"$VENV/bin/python" -m pytest backends/torch/tests -q -p no:cacheprovider "$@"
