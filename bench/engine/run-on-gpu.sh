#!/usr/bin/env bash
# Run on the GPU box from the repo root, after fetch-wheels.sh carried .whl/ there. Through the device tool,
# set OUT_DIR=$OUT so the results come back (files written elsewhere on that machine are lost).
# bf16: all cases against diffusers; then fp8 case (a) with the per-step denoiser error against bf16.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}  # the GPU image's python3 is the one with torch
$PY -m pip install -q --no-index --no-deps .whl/*.whl
$PY -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.get_device_name())"
OUT=${OUT_DIR:-bench/results}
$PY bench/engine/bench.py --device cuda --runs "${RUNS:-10}" --warmup "${WARMUP:-3}" --ablation --out "$OUT"
if $PY -c "import torchao" 2>/dev/null; then
  $PY bench/engine/bench.py --device cuda --precision fp8 --cases a --no-diffusers --fp8-error --tag fp8 --out "$OUT"
fi
# time-to-ready, cold then warm compile cache (writes ~16 GB of random weights to $TMPDIR first)
$PY bench/engine/time_to_ready.py --out "$OUT"
