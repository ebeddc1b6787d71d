# Two commands do all the set-up on a fresh machine (Python 3.11, PyPI reachable, no model hub):
#   make run    - create .venv on first use, then run the pipeline (lite profile) on sample_data/
#   make test   - create .venv on first use, then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/sample
ARGS ?=

.PHONY: run test bench gpu-bench gpu-bundle env browser clean

env: $(VENV)/.installed browser

# Debian's Chromium renders datacard.html in the data card test (headless screenshot); root installs it
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	  else echo "chromium is missing: install it (apt-get install chromium) to run the data card test" >&2; fi; }

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

run: $(VENV)/.installed
	$(BIN)/emilia-pipe run sample_data -o $(OUT) $(ARGS)

test: $(VENV)/.installed browser
	$(BIN)/python -m pytest -q tests

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/diarization_der.py

# full profile on this node's GPU(s), 60 min of speech (MINUTES=1 for a quick look), random Whisper large-v3 on the
# torch backend; JSON in benchmarks/results/. DNSMOS on CUDA needs onnxruntime-gpu instead of onnxruntime
# (see benchmarks/gpu/full_profile.py). ARGS="..." adds or overrides flags.
# Uses .venv when there is one, else the python on PATH (a GPU node's own environment).
MINUTES ?= 60
BENCH_PY ?= $(shell test -x $(BIN)/python && echo $(BIN)/python || echo python3)
gpu-bench:
	$(BENCH_PY) benchmarks/gpu/full_profile.py --minutes $(MINUTES) --device cuda --asr large-v3-random $(ARGS)

# the carry-on folder for a GPU node that installs nothing (<= 64 MiB; needs PyPI here, not there); on the node:
#   python gpu-bundle/run.py --minutes 10 --out results.json      (see benchmarks/gpu/bundle.py)
gpu-bundle: $(VENV)/.installed
	$(BIN)/python benchmarks/gpu/bundle.py --out gpu-bundle

clean:
	rm -rf $(VENV) out gpu-bundle
