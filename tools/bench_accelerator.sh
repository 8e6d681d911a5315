#!/usr/bin/env bash
# Every accelerator figure in one go, well under 8 minutes on one GPU, into one JSON and one
# markdown summary. Any session lent a device runs this first and puts summary.md in its note.
#
#   tools/bench_accelerator.sh [--dry_run] [OUT]      # OUT defaults to workdirs/bench_accelerator
#   PYTHON=/path/to/python tools/bench_accelerator.sh  # default: .venv/bin/python, else python3
#
# 1. tools/bench_vit.py: ViT forward and train step TFLOP/s and MFU (ViT-B/14, 448 px, bf16);
# 2. tools/bench_train.py --preset=gpu: the trainer's step against the PyTorch reference step;
# 3. tools/bench_detector.py --preset=gpu: the detector, and what it adds to a classifier step;
# 4. tools/bench_data.py at 2048 px, batch 32: the loader's images per CPU-second, set against
#    the measured step by tools/bench_summary.py (host cores one accelerator needs).
# Each part has its own time limit and log; one that fails or runs over costs only its own
# figures. --dry_run runs the same parts at tiny shapes: the check on a CPU before a session.
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
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

part() {  # part NAME SECONDS ARGS...: one benchmark under a time limit; its rc and duration.
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$PYTHON" "$@" --json="$OUT/$name.json" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"rc\": $rc, \"seconds\": $((SECONDS - start)), \"limit\": $limit}" >"$OUT/$name.status"
  echo "$name: rc $rc, $((SECONDS - start)) s (limit $limit s), log $OUT/$name.log"
}

SCALE=1
VIT=vitb14
if [[ ${#DRY[@]} -gt 0 ]]; then
  # A CPU compiles and runs even tiny shapes slowly, and may be shared: longer limits, ViT-S.
  SCALE=4
  VIT=vits14
  DATA=(--size 600 --num_studies 1 --long_side 256 --batch 4 --batches 3 --workers 1)
else
  DATA=(--size 3500 --num_studies 2 --long_side 2048 --batch 32 --batches 10
        --workers "$(nproc)")
fi
rm -f "$OUT"/*.json "$OUT"/*.status "$OUT"/summary.md
part vit 110 tools/bench_vit.py --variant="$VIT" --dtype=bfloat16 --sizes=448 --batch=20 \
  --parts=forward,train "${DRY[@]}"
part train 110 tools/bench_train.py --preset=gpu "${DRY[@]}"
part detector 130 tools/bench_detector.py --preset=gpu "${DRY[@]}"
part data 100 tools/bench_data.py "${DATA[@]}" --codecs uncompressed --target 1 \
  --workdir "$OUT/data"
"$PYTHON" tools/bench_summary.py "$OUT"
