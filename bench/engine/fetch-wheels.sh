#!/usr/bin/env bash
# Run here (with PyPI access): puts the wheels the GPU box lacks into .whl/ at the repo root, an ignored path
# that the device runner can carry. The GPU box has torch and transformers but no diffusers.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
.venv/bin/pip download -q --no-deps -d .whl "diffusers==0.42.1" importlib_metadata zipp "prometheus_client>=0.20"
if [ "${WITH_TORCHAO:-1}" = 1 ]; then .venv/bin/pip download -q --no-deps -d .whl torchao || echo "torchao wheel not found: fp8 runs will be skipped" >&2; fi
ls -la .whl
