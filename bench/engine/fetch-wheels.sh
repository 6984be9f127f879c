#!/usr/bin/env bash
# Run here (PyPI reachable): puts the Python 3.12 x86-64 wheels the GPU image lacks into .whl/ at the repo root
# (ignored by git; the device tool carries it with `carry: [".whl"]`). gpu-run.sh installs them there with
# `pip install --no-deps --target /tmp/site` and PYTHONPATH, never into the image's own environment.
#
# The GPU image has Python 3.12, torch 2.11, torchvision 0.26, transformers 5.17, triton 3.6, huggingface_hub 1.33,
# safetensors 0.8, accelerate 1.15, peft, pytest, numpy, pillow, regex, requests, filelock, zipp and prometheus_client
# (the device tool's KINDS.md). What it lacks:
#   diffusers 0.42.1        (needs huggingface-hub>=1.32,<3 and safetensors>=0.8: both there)
#   importlib_metadata      (diffusers' one requirement the image does not have)
#   torchao 0.17.0          (released for torch 2.11; 0.18 targets 2.12): --precision fp8 only
set -euo pipefail
cd "$(dirname "$0")/../.."
PIP=${PIP:-.venv/bin/pip}
rm -rf .whl && mkdir -p .whl
fetch() {
  "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$@"
}
fetch "diffusers==0.42.1" "importlib_metadata==8.7.0"
fetch "torchao==0.17.0"
ls -la .whl
total=$(du -sk .whl | cut -f1)
echo "wheels: ${total} KiB (the whole carried tree must stay under 64 MiB)"
[ "$total" -lt 40000 ] || { echo "wheels too large to carry" >&2; exit 1; }
