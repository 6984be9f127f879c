#!/usr/bin/env bash
# The engine's GPU measurements in stages that each fit one device-tool command (at most 8 minutes each):
#
#   smoke  1-3 min  engine tests (library names, parity, fast path, fused QKV, compiled VAE/text encoder, inference thread) with
#                   the machine's own torch, then the tiny model on the GPU,
#                   eager and compiled, on one case (bench/engine/smoke.py). A failed smoke stops later stages.
#   1      ~5 min   (a) 1024² edit 1 ref and (c) 1024² text-to-image: kleinserve vs diffusers eager bf16, profile of (a)
#   2      ~7 min   (b) 1024² 4 refs, (d) 512² 8 concurrent (batched, alone, deterministic), batch sweep, ablation
#   3      ~7 min   fp8 (a) beside bf16 (a) with the per-step fp8 error; time to ready on the 1024² bucket only
#   4      ~7 min   (a) with the fast path's optional pieces added one by one (cudnn.benchmark, compiled VAE, compiled
#                   text encoder, fused QKV, fp8 attention), each timed end to end and by stage, compile included
#   lora   ~7 min   per-request LoRA cost at 1024², rank 16 and 64 (bench/engine/lora_bench.py), lora-<card>.{json,md}
#
# usage: bash bench/engine/gpu-run.sh STAGE [STAGE...]     e.g. `smoke 1` in one command, then `2`, `3`, `4`
# One command never runs past KLEINSERVE_GPU_RUN_BUDGET_S (570 s): a stage that would is cut short (its finished
# cases are on file) and the stages after it are skipped, so a 600 s device command always returns its files.
# Results: JSON + markdown written after every case into $OUT (the device tool's folder; bench/results without
# it), named engine-<card>-<stage>.{json,md}, plus one gpu-run.log: at most 7 files for `smoke 1 2`, within the
# tool's 8. The wheels the GPU image lacks (.whl/, from bench/engine/fetch-wheels.sh) go to a scratch
# --target directory on PYTHONPATH, never into the image's own environment.
# KLEINSERVE_BENCH_DEVICE=cpu: a dry run of every stage on the tiny model (what the CPU test suite runs).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUTDIR=${OUT:-$ROOT/bench/results}
mkdir -p "$OUTDIR"
DEVICE=${KLEINSERVE_BENCH_DEVICE:-cuda}
PY=${PY:-python3}  # the GPU image's python3 is the one with torch
LOG=$OUTDIR/gpu-run.log
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 DIFFUSERS_VERBOSITY=error TRANSFORMERS_VERBOSITY=error

if [ $# -eq 0 ]; then
  echo "usage: $0 STAGE [STAGE...]   (smoke, 1, 2, 3, 4, lora)" >&2
  exit 2
fi
for stage in "$@"; do
  case $stage in smoke|1|2|3|4|lora) ;; *) echo "unknown stage '$stage' (want smoke, 1, 2, 3, 4 or lora)" >&2; exit 2 ;; esac
done

# Seconds each step may take on the GPU machine; the CPU dry run is slower and gets SCALE times as long.
SCALE=$([ "$DEVICE" = cuda ] && echo 1 || echo "${KLEINSERVE_BENCH_TIME_SCALE:-10}")
# The device tool kills a command at its timeout (600 s at most) and returns what $OUT holds by then; every stage
# gets at most what is left of this budget, so the command always ends by itself with its files written.
START=$(date +%s)
BUDGET=$(( ${KLEINSERVE_GPU_RUN_BUDGET_S:-570} * SCALE ))
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
log() { echo "[gpu-run $(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
# Runs a command with a time limit, its output into the log too; the limit keeps a stage inside its command.
limited() {
  local secs=$(( $1 * SCALE )) remaining; shift
  remaining=$(( $(left) - 20 ))
  if [ "$remaining" -lt 30 ]; then
    log "skipped (command budget spent): $*"
    return 124
  fi
  [ "$secs" -le "$remaining" ] || secs=$remaining
  timeout -k 10 "$secs" "$@" 2>&1 | tee -a "$LOG"
  return "${PIPESTATUS[0]}"
}

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/kleinserve-gpu-run.XXXXXX")
export TORCHINDUCTOR_CACHE_DIR=$SCRATCH/inductor TRITON_CACHE_DIR=$SCRATCH/triton
if [ "$DEVICE" = cuda ]; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    log "installing $(ls .whl | tr '\n' ' ')into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      2>&1 | tee -a "$LOG" || { log "wheel install failed"; exit 3; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    log "no .whl/ here: run bench/engine/fetch-wheels.sh and carry .whl (diffusers is not in the GPU image)"
  fi
  BENCH=(--device cuda --runs "${RUNS:-5}" --warmup "${WARMUP:-2}")
  TTR=(--warmup 1024x1024:1)
  SMOKE_BACKEND=inductor
  STAGE4=()
else
  # dry run: the tiny model, one timed run, compiled with aot_eager (inductor's C++ build takes minutes on a CPU)
  BENCH=(--device cpu --tiny --runs 1 --warmup 1 --compile --compile-backend aot_eager)
  TTR=(--tiny)
  SMOKE_BACKEND=aot_eager
  # stage 4 compiles the VAE: on the CPU, aot_eager's trace of its attention block hands the group norm kernel a
  # tensor it refuses (torch 2.13), so the dry run captures with dynamo's eager backend there
  STAGE4=(--compile-backend eager)
fi
export PYTHONPATH=$ROOT/engine${PYTHONPATH:+:$PYTHONPATH}

log "stages: $* on $DEVICE; results into $OUTDIR"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
      "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("diffusers", "transformers", "triton", "torchao"):
    try:
        print(name, __import__(name).__version__)
    except Exception as exc:
        print(name, "unavailable:", type(exc).__name__, exc)
EOF

status=0
for stage in "$@"; do
  t0=$(date +%s)
  log "stage $stage begins"
  case $stage in
    smoke)
      SMOKE_TESTS=(tests/test_library_names.py tests/test_parity.py tests/test_fastpath.py tests/test_fused_qkv.py tests/test_compiled_components.py tests/test_inference_thread.py)
      if [ "$DEVICE" = cuda ]; then
        # on the GPU machine's own CPU with its torch 2.11: proves the engine code runs there (the CUDA checks are smoke.py's)
        (cd engine && OMP_NUM_THREADS=8 limited 90 "$PY" -m pytest -q -p no:cacheprovider "${SMOKE_TESTS[@]}")
      else  # the CPU suite runs these tests itself; the dry run only checks that they are found
        (cd engine && limited 110 "$PY" -m pytest -q -p no:cacheprovider --collect-only "${SMOKE_TESTS[@]}")
      fi
      rc=$?
      log "engine tests exit status $rc"
      if ! limited 120 "$PY" bench/engine/smoke.py --device "$DEVICE" --backend "$SMOKE_BACKEND" --pytest-rc "$rc" --out "$OUTDIR"; then
        log "smoke FAILED: the engine does not run here; later stages skipped"
        status=1
        break
      fi
      ;;
    1)
      limited 400 "$PY" bench/engine/bench.py "${BENCH[@]}" --cases a,c --profile a --tag stage1 --out "$OUTDIR" || status=1
      ;;
    2)
      limited 470 "$PY" bench/engine/bench.py "${BENCH[@]}" --cases b,d --batch-sweep --deterministic-cost --ablation \
        --tag stage2 --out "$OUTDIR" || status=1
      ;;
    3)
      limited 270 "$PY" bench/engine/bench.py "${BENCH[@]}" --cases a --no-diffusers --precision bf16,fp8 --fp8-error \
        --tag stage3 --out "$OUTDIR" || status=1
      limited 200 "$PY" bench/engine/time_to_ready.py "${TTR[@]}" --out "$OUTDIR" || status=1
      ;;
    4)
      limited 470 "$PY" bench/engine/bench.py "${BENCH[@]}" "${STAGE4[@]}" --cases '' --no-diffusers --ablation components \
        --tag stage4 --out "$OUTDIR" || status=1
      ;;
    lora)
      limited 470 "$PY" bench/engine/lora_bench.py "${BENCH[@]}" --out "$OUTDIR" || status=1
      ;;
  esac
  log "stage $stage ends after $(( $(date +%s) - t0 ))s"
done
rm -rf "$SCRATCH"
log "done (status $status); files: $(ls "$OUTDIR" | tr '\n' ' ')"
exit $status
