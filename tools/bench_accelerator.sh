#!/usr/bin/env bash
# Every accelerator figure in one command, in under 8 minutes on one H100/H200 or TPU chip, into
# one JSON per part and one markdown summary. Any session lent a device runs this first and puts
# summary.md in its note.
#
#   tools/bench_accelerator.sh [--dry_run] [OUT]      # OUT defaults to workdirs/bench_accelerator
#   PYTHON=/path/to/python tools/bench_accelerator.sh  # default: .venv/bin/python, else python3
#
# It refuses to run where JAX's backend is the CPU (the figures would be a CPU's), unless
# --dry_run, which runs every part at tiny shapes: the check on a CPU before a session. The
# per-device batch is the one tools/scale_report.py fixed for configs/vindr.py
# (docs/scale/vindr.json). Parts, each with its own time limit and log:
#   1. attention: bench_vit.py, ViT-B/14 448 px bf16, forward and train step, XLA's attention
#      against the kernel attend_jax picks here (cuDNN flash, splash): TFLOP/s, MFU, peak memory;
#   2. train: bench_train.py --preset=gpu --frameworks=jax: the trainer's step, MFU;
#   3. torch: the same step in PyTorch, in a process of its own, only where torch has CUDA;
#   4. loop: bench_loop.py, 30 real trainer steps on synthetic records at vindr.py's shapes
#      (pipeline, prefetch, transfer and step together): images/s, MFU, peak memory;
#   5. detector: bench_detector.py --preset=gpu;
#   6. data: bench_data.py at 2048 px, the loader's images per CPU-second, against the step.
# Each part's JSON is rewritten as each of its figures completes: a part that runs over its
# limit keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=()
if [[ "${1:-}" == "--dry_run" ]]; then
  DRY=(--dry_run)
  shift
fi
OUT=${1:-workdirs/bench_accelerator}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD:$PWD/tools${PYTHONPATH:+:$PYTHONPATH}"

BACKEND=$("$PYTHON" -c 'import jax; print(jax.default_backend())' 2>/dev/null)
if [[ -z "$BACKEND" ]]; then
  echo "error: $PYTHON cannot import jax; set PYTHON= to the environment with attend_jax." >&2
  exit 2
fi
if [[ "$BACKEND" == "cpu" && ${#DRY[@]} -eq 0 ]]; then
  echo "error: JAX's backend here is the CPU, so every figure would be a CPU's; install JAX for" \
       "the GPU or TPU, or pass --dry_run to check the code path." >&2
  exit 2
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.status "$OUT"/summary.md

part() {  # part NAME SECONDS ARGS...: one benchmark under a time limit; its rc and duration.
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$PYTHON" "$@" --json="$OUT/$name.json" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"rc\": $rc, \"seconds\": $((SECONDS - start)), \"limit\": $limit}" >"$OUT/$name.status"
  echo "$name: rc $rc, $((SECONDS - start)) s (limit $limit s), log $OUT/$name.log"
}

skip() {  # skip NAME REASON: a part that cannot run here, said in the summary.
  printf '{"rc": null, "skipped": "%s"}\n' "$2" >"$OUT/$1.status"
  echo "$1: skipped, $2"
}

# The per-device batch the scale report fixed for vindr.py (4 images per chip, remat chosen so
# that it fits a 16 GB v5e).
BATCH=$("$PYTHON" -c 'import json; print(json.load(open("docs/scale/vindr.json"))["per_device_batch"])' \
        2>/dev/null || echo 4)
DEVICES=$("$PYTHON" -c 'import jax; print(jax.local_device_count())')
SCALE=1
VIT=(--variant=vitb14 --dtype=bfloat16 --sizes=448)
if [[ ${#DRY[@]} -gt 0 ]]; then
  # A CPU compiles and runs even tiny shapes slowly, and may be shared: longer limits.
  SCALE=4
  BATCH=2  # The reference's BatchNorm needs two images to train.
  VIT=(--variant=vits14)
  DATA=(--size 600 --num_studies 1 --long_side 256 --batch 4 --batches 3 --workers 1)
  LOOP=()
else
  DATA=(--size 3500 --num_studies 2 --long_side 2048 --batch 32 --batches 10
        --workers "$(nproc)")
  LOOP=(--config=configs/vindr.py)
fi
echo "backend $BACKEND, $DEVICES device(s), $BATCH images per device; figures in $OUT"
part attention 80 tools/bench_vit.py "${VIT[@]}" --batch=$((BATCH * 5)) --parts=forward,train \
  --attention=xla,auto --notorch "${DRY[@]}"
part train 60 tools/bench_train.py --preset=gpu --frameworks=jax --batch="$BATCH" "${DRY[@]}"
if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || [[ ${#DRY[@]} -gt 0 ]]; then
  part torch 70 tools/bench_train.py --preset=gpu --frameworks=torch --batch="$BATCH" \
    --overlap_steps=0 "${DRY[@]}"
else
  skip torch "this machine's torch has no CUDA"
fi
part loop 150 tools/bench_loop.py "${LOOP[@]}" --per_device_batch="$BATCH" \
  --workdir="$OUT/loop" "${DRY[@]}"
part detector 70 tools/bench_detector.py --preset=gpu "${DRY[@]}"
part data 50 tools/bench_data.py "${DATA[@]}" --codecs uncompressed --target 1 \
  --workdir "$OUT/data"
"$PYTHON" tools/bench_summary.py "$OUT"
