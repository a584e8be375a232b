#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one call that fits BUDGET seconds (420) on a fresh H100/H200.
#
#   bash scripts/gpu_check.sh             # on the GPU machine; results under $OUT (default results/gpu_check/)
#   bash scripts/gpu_check.sh --dry-run   # every step on this CPU with the tiny presets, no wheels needed
#
# The GPU machine is assumed to have Python 3.12, torch and CUDA, but not hydra-core or omegaconf, and an
# older transformers: those are installed from the wheels in .whl/ (download them first, on a machine
# with network: scripts/gpu_wheels.sh). The project itself is not installed (that would pull the CPU
# torch it pins); it runs from src/.
#
# In order of value, each step with its own time limit; the limits add up to BUDGET:
#   1. the GPU tests (tests/test_gpu.py, BLENDIN_REQUIRE_CUDA=1: no GPU is a failure), each test at most
#      BLENDIN_TEST_TIMEOUT seconds: real syncs (torch's sync debug mode), memory given back, CUDA graphs,
#      batch_size=auto and halving on a small GPU, overlap and the guidance's own stream on and off;
#   2. speed, Llama-3.1-8B base + Llama-3.2-1B guidance (one tokenizer), bf16, batch 32 and 1, overlap on
#      and off: base vs transformers' generate, guided vs base, where the time goes, bandwidth, memory;
#   3. the same for Qwen3-8B + Llama-3.2-1B (two tokenizers);
#   4. bf16 outputs at batch 1 vs 16 (do they depend on the batch?);
#   5. compile=none vs cudagraphs, batch 32;
#   6. sampling (temperature 0.7) beside greedy decoding, batch 32;
#   7. speculative decoding (speculate 0, 4), batch 1 and 32.
# The models are random initialisations of the real sizes whose outputs read like text (the base unsure
# on about a fifth of the steps: blendin.scripted); speed does not depend on weight values.
# Each step's table goes into $OUT/summary.md (and its rows into $OUT/bench.json) as soon as it ends, or
# is cut off at its limit, so a check that is killed still leaves what it measured. $OUT also gets
# log.txt (all output) and tests.txt (one line per GPU test, written as the tests run).
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
BUDGET=${BUDGET:-420}
if [ $DRY = 1 ]; then
  OUT=${OUT:-results/gpu_check-dry-run}
  LLAMA=tiny-shared QWEN=tiny DEVICE=cpu DTYPE=float32 GRAPHS=compile
  LEN=16 N=8 BIG=8  # small enough that every step ends within its limit on two CPU cores
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
else
  OUT=${OUT:-results/gpu_check}
  LLAMA=llama8b+llama1b QWEN=qwen8b+llama1b DEVICE=cuda DTYPE=bfloat16 GRAPHS=cudagraphs
  LEN=128 N=32 BIG=32
  PY=${PYTHON:-python3}
fi
mkdir -p "$OUT"
: > "$OUT/summary.md"; : > "$OUT/log.txt"; : > "$OUT/tests.txt"; echo "[]" > "$OUT/bench.json"
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH=src TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
START=$(date +%s)
say() { echo "$*" | tee -a "$OUT/summary.md"; }

if [ $DRY = 0 ]; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    say "No wheels in .whl/: this machine lacks hydra-core and omegaconf. Fix: run scripts/gpu_wheels.sh on a machine"
    say "with network, then carry .whl with the call (device tool: carry=[\".whl\"])."
    exit 2
  fi
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { say "installing .whl/ failed"; exit 2; }
  export PYTHONPATH=/tmp/site:src
fi

# step NAME LIMIT COMMAND...: run within LIMIT seconds (less if the budget is nearly spent), log all output,
# then add what the step measured to $OUT at once
step() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START) - 5))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 15 ]; then say "- $name: skipped (budget spent)"; return; fi
  echo "== $name (limit ${limit}s): $*" >> "$OUT/log.txt"
  local t0=$(date +%s)
  mkdir -p "$WORK/$name"
  timeout -k 10 "$limit" "$@" >> "$OUT/log.txt" 2>&1
  local rc=$?
  say "- $name: exit $rc in $(( $(date +%s) - t0 ))s$( [ $rc = 124 ] || [ $rc = 137 ] && echo ' (cut off at its time limit)')"
  for md in "$WORK/$name"/*.md; do [ -f "$md" ] && { echo; cat "$md"; echo; } >> "$OUT/summary.md"; done
  $PY - "$WORK/$name" "$OUT/bench.json" <<'PY'
import json, pathlib, sys
runs = json.loads(pathlib.Path(sys.argv[2]).read_text())
runs += [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))]
pathlib.Path(sys.argv[2]).write_text(json.dumps(runs, indent=1))
PY
}
# bench NAME LIMIT ARGS...: a step that runs python -m blendin.bench, its tables into $WORK/NAME
bench() { local name=$1 limit=$2; shift 2
  step "$name" "$limit" $PY -m blendin.bench --device $DEVICE --dtype $DTYPE --out "$WORK/$name" "$@"; }

say "# GPU check $(date -u +%FT%TZ)$( [ $DRY = 1 ] && echo ' (dry run on the CPU: tiny presets)')"
say ""
say "$( (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no GPU') | head -1)"
say "$($PY -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1 | tail -1)"
say ""

# 1: -v writes one line per test as it finishes, so a cut-off run still shows every finished test
REQUIRE=$( [ $DRY = 1 ] && echo 0 || echo 1 )
step gpu-tests 100 env BLENDIN_REQUIRE_CUDA=$REQUIRE BLENDIN_TEST_TIMEOUT=40 \
  sh -c "$PY -m pytest -v -p no:cacheprovider tests/test_gpu.py -rfEs 2>&1 | tee -a '$OUT/tests.txt'"
say "  GPU tests: $(grep -c ' PASSED' "$OUT/tests.txt") passed, $(grep -c ' FAILED' "$OUT/tests.txt") failed, \
$(grep -c ' ERROR' "$OUT/tests.txt") errors, $(grep -c ' SKIPPED' "$OUT/tests.txt") skipped (tests.txt)"
bench speed-llama 85 --synthetic "$LLAMA" --batch-sizes $BIG 1 --lengths $LEN --n $N --n-batch1 2 \
  --methods base nudging blendin --overlap on off --no-hf-static
bench speed-qwen 60 --synthetic "$QWEN" --batch-sizes $BIG 1 --lengths $LEN --n $N --n-batch1 2 \
  --methods base nudging blendin --no-hf-static
bench identity 35 --synthetic "$LLAMA" --batch-sizes 1 $((BIG / 2)) --lengths $((LEN / 2)) --n $((N / 2)) --identity \
  --methods base nudging blendin --no-hf-static
bench compile 80 --synthetic "$LLAMA" --batch-sizes $BIG --lengths $LEN --n $N --methods base nudging \
  --compile none $GRAPHS --no-hf-static
bench sampling 30 --synthetic "$LLAMA" --batch-sizes $BIG --lengths $LEN --n $N --methods base blendin \
  --temperature 0 0.7 --no-hf-static
bench speculate 30 --synthetic "$LLAMA" --batch-sizes 1 $BIG --lengths $LEN --n $N --n-batch1 2 \
  --methods base nudging blendin --speculate 0 4 --no-hf-static

say ""
say "total $(( $(date +%s) - START ))s of a ${BUDGET}s budget"
