# ntrk-bench: `make run` sets up a fresh machine and runs the main job; `make test` runs the tests.
SHELL   := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
EXTRAS  ?= dev,slurm,plot
SUITE   ?= all

.PHONY: setup run test bench gpu-check probe mini-train eval tables clean env-t2icount

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[$(EXTRAS)]" 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -c "import ntrk_bench, torch; print('ntrk-bench installed; torch', torch.__version__)"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)                    ## the main job (offline, CPU)
	$(BIN)/python run.py $(ARGS)

test: $(STAMP)                   ## the test suite
	$(BIN)/python -m pytest tests $(ARGS)

eval: $(STAMP)                   ## evaluation stage: held-out evaluators over results/runs (resumable)
	$(BIN)/python -m ntrk_bench.evaluate $(ARGS)

tables: $(STAMP)                 ## results/tables: CSV/Markdown/LaTeX + plots, paper values side by side (SUITE=all|paper)
ifeq ($(SUITE),mini)                 # SUITE=mini: run the mini sweeps (resumable), evaluate, tables, docs/RESULTS.md
	$(BIN)/python scripts/mini_paper.py $(ARGS)
else
	$(BIN)/python -m ntrk_bench.tables --suite $(SUITE) $(ARGS)
endif

bench: $(STAMP)                  ## speed benchmarks (ratios measured side by side in one run)
	$(BIN)/python scripts/bench_whitening.py $(ARGS)

gpu-check: $(STAMP)              ## every method on FLUX / Z-Image / Wan2.1 (real-size random transformers on CUDA, tiny on CPU)
	$(BIN)/python scripts/gpu_check.py $(ARGS)

probe: $(STAMP)                  ## noise-compatibility probe of the mini suite (paper Fig. 2)
	$(BIN)/python scripts/probe_noise.py $(ARGS)

mini-train: $(STAMP)             ## retrain the mini suite's rewards and learned tier (seeded; ~20 min on 2 cores)
	$(BIN)/python scripts/train_mini_rewards.py
	$(BIN)/python scripts/train_mini.py

clean:
	rm -rf $(VENV) results/runs results/multirun results/tables results/bench .pytest_cache

T2ICOUNT_ENV ?= envs/t2icount

env-t2icount: $(T2ICOUNT_ENV)/.installed   ## T2I-Count's own environment for its gradient server (conf/reward/t2icount.yaml)

$(T2ICOUNT_ENV)/.installed: envs/t2icount-constraints.txt
	$(PY) -m venv $(T2ICOUNT_ENV)
	$(T2ICOUNT_ENV)/bin/pip install -q --upgrade pip
	$(T2ICOUNT_ENV)/bin/pip install -q -r envs/t2icount-constraints.txt -c envs/t2icount-constraints.txt
	$(T2ICOUNT_ENV)/bin/python -c "import torch, transformers, pytorch_lightning, taming, clip, kornia; print('T2I-Count env: torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@
