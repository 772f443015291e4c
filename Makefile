# Everything a fresh machine needs: `make demo` and `make test` install first when .venv is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install test test-full test-slurm test-parity demo lint tensorboard bench bench-gpu clean

$(BIN)/icg: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: an open range would otherwise pull a multi-GB CUDA build.
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,lora]'
	touch $@

install: $(BIN)/icg

test: install
	$(BIN)/pytest -q

test-full: install
	$(BIN)/pytest -q -m "not gpu and not slurm and not parity"

test-slurm: install
	$(BIN)/pytest -q -m slurm

test-parity: install
	bash scripts/parity_env.sh
	$(BIN)/pytest -q -m parity

demo: install
	$(BIN)/python -m icg.demo

lint: install
	$(BIN)/ruff check icg tests benchmarks
	$(BIN)/ruff format --check icg tests benchmarks

tensorboard: install
	$(BIN)/tensorboard --logdir runs --host 127.0.0.1

bench: install
	$(BIN)/python -m benchmarks.run_all

bench-gpu: install
	$(BIN)/python -m benchmarks.run_all --device cuda

clean:
	rm -rf runs .pytest_cache
