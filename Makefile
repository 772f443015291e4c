# Everything a fresh machine needs: `make demo` and `make test` install first when .venv is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install browser test test-slow test-browser test-full test-slurm test-parity demo demo-check demo-seeds prompting lint tensorboard bench bench-gpu bench-gpu-wheels clean

$(BIN)/icg: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: an open range would otherwise pull a multi-GB CUDA build.
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,lora,study]'
	touch $@

install: $(BIN)/icg

test: install
	$(BIN)/pytest -q

# Only the slow CPU tests (stage-2 validation, end-to-end evaluation, resume of stages 2 and 3, ...): CI runs them
# after `make test` instead of `make test-full`, which would run the fast set a second time.
test-slow: install
	$(BIN)/pytest -q -m "slow and not gpu"

test-full: install browser
	$(BIN)/pytest -q -m "not gpu and not slurm and not parity"

# Headless Chromium (Debian's package) opens the demo gallery and drives the study app through Debian's
# chromedriver + selenium; installed here, not at import time, and no tool downloads a browser of its own.
browser: install
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	$(BIN)/python -c "import selenium" 2>/dev/null || $(BIN)/pip install -q -c constraints.txt -e '.[browser]'

test-browser: install browser
	$(BIN)/pytest -q -m browser

test-slurm: install
	$(BIN)/pytest -q -m slurm

test-parity: install
	bash scripts/parity_env.sh
	$(BIN)/pytest -q -m parity

demo: install
	$(BIN)/python -m icg.demo

# The demo's claims must hold (CI's guard): exit 1 when one breaks.
demo-check: install
	$(BIN)/python -m icg.demo --check

# The whole pipeline once per seed (platform included) and the per-seed table with mean and worst case.
demo-seeds: install
	$(BIN)/python -m icg.demo --seeds 0 1 2

# ICG trained and judged from pure noise (docs/prompting.md, "ICG trained from noise"), after `make demo` (which trains
# the stand-in MLLM and runs the reference-guided prompting comparison; SEED = the demo's seed): stage 3 through the
# trained stand-in MLLM with stage3_from_noise.yaml, then every method from noise, the handcrafted prompt included.
# The fit runs on one thread, as the demo's fits do, so it gives the figures of docs/prompting.md. ~3.5 min on CPU.
SEED ?= 0
SEEDED := --seed_everything $(SEED) --data.seed $(SEED) --model.init_args.seed $(SEED)
prompting: install
	OMP_NUM_THREADS=1 $(BIN)/icg fit --config lightning_configs/demo/stage3_alignment.yaml \
	    --config lightning_configs/demo/stage3_trained_mllm.yaml \
	    --config lightning_configs/demo/stage3_from_noise.yaml $(SEEDED)
	$(BIN)/icg evaluate --data_root runs/demo/data --stage1_ckpt runs/demo/stage1/checkpoints/last.ckpt \
	    --stage3_ckpt runs/demo/stage3_from_noise/checkpoints/last.ckpt --base_model runs/demo/base_model \
	    --no_user_ckpt runs/demo/stage3_no_user/checkpoints/last.ckpt \
	    --holdout 3 --seed $(SEED) --prompt_words 2 --out_dir runs/demo/prompting_from_noise

# ruff (style, imports, complexity: arguments, statements, branches) and import-linter (the layers of
# docs/architecture.md, no cycles between sibling modules); CI runs it first.
lint: install
	$(BIN)/ruff check icg tests benchmarks
	$(BIN)/ruff format --check icg tests benchmarks
	$(BIN)/lint-imports

tensorboard: install
	$(BIN)/tensorboard --logdir runs --host 127.0.0.1

# CPU benchmarks; figures go into docs/performance.md by hand (each prints a table).
bench: install
	$(BIN)/python -m benchmarks.sampler_vs_pipeline
	$(BIN)/python -m benchmarks.alignment_memory
	$(BIN)/python -m benchmarks.feature_cache --models tiny
	$(BIN)/python -m benchmarks.image_feature_cache
	$(BIN)/python -m benchmarks.datamodule_scale --scale 0.1
	$(BIN)/python -m benchmarks.generate_vs_pipeline

# On a CUDA machine: SD 1.5-sized architectures (random weights), 512 px, bf16, one table; results under
# runs/bench-gpu. It runs on the machine's CUDA python3 (not the CPU .venv); the pinned diffusers and transformers
# (+ importlib_metadata) are built into .whl/ here, so a machine without network gets them by carrying that folder.
WHEELS := .whl
$(WHEELS)/.built: constraints.txt
	mkdir -p $(WHEELS)
	$${PYTHON:-python3} -m pip wheel -q --no-deps -w $(WHEELS) \
	  $$(grep -E '^(diffusers|transformers)==' constraints.txt) importlib_metadata==8.7.0
	touch $@

bench-gpu-wheels: $(WHEELS)/.built

bench-gpu: bench-gpu-wheels
	PYTHON=$${PYTHON:-python3} bash benchmarks/gpu_all.sh runs/bench-gpu

clean:
	rm -rf runs .pytest_cache
