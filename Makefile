# `make train` and `make test` set up .venv on first use, then run.
# install also puts the checkout on the venv's path (an editable install, no dependencies pulled),
# so the scripts under visualization/, audit/ and benchmarks/ find the packages from any directory.
# TORCH selects the torch build; torch==2.13.0 is the CPU build on machines that ship it locally.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test test-slow test-all test-triton test-gpu lint clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

train: $(STAMP)
	$(PY) train_hydra.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

test-all: $(STAMP)
	$(PY) -m pytest

# Triton is optional (the `gpu` extra) and not in requirements.txt; its kernels' tests run on CPU
# under Triton's interpreter and compile them for A100 and H100 with its bundled compiler, so this
# target needs no GPU.
test-triton: $(STAMP)
	$(PY) -m pip install "triton>=3.4"
	$(PY) -m pytest tests/test_scan_triton.py -m "slow or not slow"

# The tests marked gpu: the Triton scan on CUDA, every model's CUDA outputs and gradients against its
# CPU ones, bf16-mixed training on CUDA. Elsewhere they are skipped, each saying why.
test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu

clean:
	rm -rf logs .pytest_cache
