#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one call of about 7 minutes on a fresh H100/H200 machine.
#
#   bash scripts/gpu_check.sh          # results under $OUT (default results/gpu_check/)
#
# The machine is assumed to have Python 3.12, torch and CUDA, but not hydra-core or omegaconf, and an
# older transformers: those are installed from the wheels in .whl/ (download them first, on a machine
# with network: scripts/gpu_wheels.sh). The project itself is not installed (that would pull the
# CPU torch it pins); it runs from src/.
#
# In order of importance, each step with a time limit, the whole within BUDGET seconds:
#   1. speed, Llama-3.1-8B base + Llama-3.2-1B guidance (one tokenizer), bf16, batch 1 and 32, 128 new
#      tokens, both guidance schedules: base vs transformers' generate, guided vs base, where the time
#      goes, the fraction of the memory-bandwidth limit, peak and reserved memory;
#   2. the GPU tests (tests/test_gpu.py) with BLENDIN_REQUIRE_CUDA=1 (no GPU = failure, not a skip);
#   3. speed, Qwen3-8B base + Llama-3.2-1B guidance (two tokenizers);
#   4. bf16 outputs at batch 1 vs 16 (do they depend on the batch?);
#   5. compile=none / compile / cudagraphs and transformers' static-cache generate, batch 32;
#   6. sampling (temperature 0.7) beside greedy decoding, batch 32: what the draws cost on a GPU.
# The models are random initialisations of the real sizes (speed does not depend on weight values).
# $OUT gets: summary.md (every table), bench.json (every row), log.txt (all output), tests.txt.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
BUDGET=${BUDGET:-420}
LLAMA=${LLAMA_PAIR:-llama8b+llama1b}  # LLAMA_PAIR=tiny-shared QWEN_PAIR=tiny: a dry run of this script on a CPU
QWEN=${QWEN_PAIR:-qwen8b+llama1b}
mkdir -p "$OUT"
: > "$OUT/summary.md"; : > "$OUT/log.txt"; : > "$OUT/tests.txt"
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH=src TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
START=$(date +%s)

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed"; exit 1; }
  export PYTHONPATH=/tmp/site:src
fi

say() { echo "$*" | tee -a "$OUT/summary.md"; }
# step NAME LIMIT COMMAND...: run within min(LIMIT, what is left of BUDGET), log everything
step() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START) - 5))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then say "- $name: skipped (budget spent)"; return; fi
  echo "== $name (limit ${limit}s): $*" >> "$OUT/log.txt"
  local t0=$(date +%s)
  timeout -k 15 "$limit" "$@" >> "$OUT/log.txt" 2>&1
  local rc=$?
  say "- $name: exit $rc in $(( $(date +%s) - t0 ))s$( [ $rc = 124 ] && echo ' (time limit)')"
}
BENCH=(python3 -m blendin.bench --dtype bfloat16 --out "$WORK")

say "# GPU check $(date -u +%FT%TZ)"
say ""
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
say "$(python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1 | tail -1)"
say ""

step speed-llama 150 "${BENCH[@]}" --synthetic "$LLAMA" --batch-sizes 1 32 --lengths 128 --n 32 --n-batch1 4 \
  --methods base nudging blendin --schedule lazy every --no-hf-static
step gpu-tests 200 env BLENDIN_REQUIRE_CUDA=1 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -rfEs \
  --junitxml="$WORK/tests.xml" -o junit_family=xunit2
python3 - "$WORK/tests.xml" > "$OUT/tests.txt" 2>&1 <<'PY'
import sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
print({k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")})
for case in suite.iter("testcase"):
    bad = case.find("failure") if case.find("failure") is not None else case.find("error")
    if bad is not None:
        print("FAILED", case.get("name"), (bad.get("message") or "")[:200])
PY
step speed-qwen 120 "${BENCH[@]}" --synthetic "$QWEN" --batch-sizes 1 32 --lengths 128 --n 32 --n-batch1 4 \
  --methods base nudging blendin --no-hf-static
step identity 90 "${BENCH[@]}" --synthetic "$LLAMA" --batch-sizes 1 16 --lengths 64 --n 16 --identity \
  --methods base nudging blendin --no-hf-static
step compile 200 "${BENCH[@]}" --synthetic "$LLAMA" --batch-sizes 32 --lengths 128 --n 32 --methods base nudging \
  --compile none compile cudagraphs --hf-static
step sampling 90 "${BENCH[@]}" --synthetic "$LLAMA" --batch-sizes 32 --lengths 128 --n 32 --methods base blendin \
  --temperature 0 0.7 --no-hf-static

say ""
say "GPU tests: $(head -1 "$OUT/tests.txt") (failures in tests.txt)"
say ""
for md in "$WORK"/*.md; do [ -f "$md" ] && { cat "$md" >> "$OUT/summary.md"; echo >> "$OUT/summary.md"; }; done
python3 - "$WORK" "$OUT/bench.json" <<'PY'
import json, pathlib, sys
runs = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))]
pathlib.Path(sys.argv[2]).write_text(json.dumps(runs, indent=1))
PY
echo "total $(( $(date +%s) - START ))s" | tee -a "$OUT/summary.md"
cat "$OUT/summary.md"
