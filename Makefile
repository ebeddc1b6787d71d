# Two commands do all the set-up on a fresh machine (Python 3.11, PyPI reachable, no model hub):
#   make run    - create .venv on first use, then run the pipeline (lite profile) on sample_data/
#   make test   - create .venv on first use, then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/sample
ARGS ?=

.PHONY: run test bench env clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

run: $(VENV)/.installed
	$(BIN)/emilia-pipe run sample_data -o $(OUT) $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/diarization_der.py

clean:
	rm -rf $(VENV) out
