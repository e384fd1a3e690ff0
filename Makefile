# Two commands do all setup on a fresh machine:
#   make derive   - derive the muP rules of the builtin GDN model (CPU, no downloads beyond PyPI)
#   make test     - run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup derive test bench

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Without a GPU, take the CPU build of torch first, so nothing pulls a multi-GB CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[dev]'
	# Microsoft's mup package, an oracle in the tests; --no-deps: it lists torchvision, which would pull its own torch
	$(BIN)/pip install -q --no-deps mup==1.0.0
	touch $(STAMP)

setup: $(STAMP)

derive: $(STAMP)
	$(BIN)/mudelta derive gdn

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/derive_speed.py
