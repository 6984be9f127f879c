#!/usr/bin/env bash
# A virtual environment here with the GPU image's Python packages (Python 3.12, torch 2.11, torchvision 0.26,
# transformers 5.17, huggingface_hub 1.33, safetensors 0.8, accelerate 1.15: the device tool's KINDS.md lists the
# image's packages), the carried wheels (.whl/, from fetch-wheels.sh) on
# PYTHONPATH as gpu-run.sh installs them there, then a command run in it. The engine is developed on torch 2.13
# and a newer transformers; this finds what breaks on the image's versions before a GPU minute is spent on it.
# The first call downloads about 5 GB (torch 2.11's CUDA build with its NVIDIA libraries; it runs on the CPU).
#
# usage: bash bench/engine/gpu-image-venv.sh [COMMAND...]    (default: the engine's whole test suite)
#   e.g. bash bench/engine/gpu-image-venv.sh python -m pytest -q tests/test_safety.py    (run in engine/)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV=${KLEINSERVE_GPU_IMAGE_VENV:-/tmp/kleinserve-gpu-image-venv}
SITE=$VENV/carried
# A pyenv shim named python3.12 exists even where 3.12 is not the selected version, and then fails: take the first
# candidate that runs.
if [ -z "${PY312:-}" ]; then
  for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    if "$candidate" -c '' 2>/dev/null; then PY312=$candidate; break; fi
  done
fi
[ -n "${PY312:-}" ] || { echo "needs python3.12 (the GPU image's Python): set PY312" >&2; exit 2; }
[ -x "$VENV/bin/python" ] || "$PY312" -m venv "$VENV"
# What the image has (bench/engine/fetch-wheels.sh lists it). torchvision matters: with it, transformers builds
# image processors on its torchvision backend instead of PIL's, so the safety checker runs other code there.
# Installed on every call (seconds when satisfied), so an older venv catches up.
"$VENV/bin/pip" install -q --disable-pip-version-check torch==2.11.0 torchvision==0.26.0 'transformers==5.17.*' \
  'huggingface_hub==1.33.*' 'safetensors==0.8.*' 'accelerate==1.15.*' numpy pillow regex requests filelock zipp \
  prometheus_client pytest 'peft>=0.17,<1'
compgen -G ".whl/*.whl" >/dev/null || bash bench/engine/fetch-wheels.sh
"$VENV/bin/pip" install -q --disable-pip-version-check --no-index --no-deps --upgrade --target "$SITE" .whl/*.whl
export PYTHONPATH=$SITE:$ROOT/engine${PYTHONPATH:+:$PYTHONPATH} PATH=$VENV/bin:$PATH
cd engine
if [ $# -eq 0 ]; then set -- python -m pytest -q -p no:cacheprovider tests; fi
exec "$@"
