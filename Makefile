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

# --- the official reward packages, each in its own pinned environment (optional cross-checks; run them with
# `python -m ntrk_bench.evaluate --env NAME=envs/<name>/bin/python`). envs/<name>-constraints.txt is both the
# package list (-r) and the constraints (-c, and --build-constraint for the sdists' build environments: pip >= 25.3);
# this package goes in without its dependencies: the evaluation stage's worker needs only torch, hydra-core,
# omegaconf and PyYAML, which every constraints file pins.
ENV_PY          ?= python3.10
VIDEOALIGN      ?= envs/VideoAlign
OFFICIAL_ENVS   := vbench imagereward hpsv2 vqascore videoreward

.PHONY: $(addprefix env-,$(OFFICIAL_ENVS))

env-vbench: envs/vbench/.installed            ## VBench 0.1.5 (Table 3); fill its cache: scripts/prefetch_weights.py experiment=table3
env-imagereward: envs/imagereward/.installed  ## image-reward 1.5 (rewards.external.ImageRewardEval; scripts/parity_check.py)
env-hpsv2: envs/hpsv2/.installed              ## hpsv2 1.2.0 (+ the BPE vocabulary its wheel lacks, from open_clip)
env-vqascore: envs/vqascore/.installed        ## t2v_metrics 1.2 (rewards.external.VQAScoreEval, clip-flant5-xxl)
env-videoreward: envs/videoreward/.installed  ## VideoAlign's inference code + its pins (rewards.external.VideoRewardEval)

envs/videoreward/.installed: | $(VIDEOALIGN)
$(VIDEOALIGN):
	git clone https://github.com/KwaiVGI/VideoAlign $@

# one recipe for every official environment: venv, pinned packages, this package without its dependencies,
# then the environment's own fix-ups (the BPE vocabulary; VideoAlign on the path) and an import check
envs/%/.installed: envs/%-constraints.txt
	$(ENV_PY) -m venv envs/$*
	envs/$*/bin/pip install -q --upgrade pip
	envs/$*/bin/pip install -q -r $< -c $< --build-constraint $<
	envs/$*/bin/pip install -q --no-deps -e .
	@if [ "$*" = hpsv2 ] || [ "$*" = vqascore ]; then envs/$*/bin/python -c "import importlib.util as u, os, shutil; f = 'bpe_simple_vocab_16e6.txt.gz'; src = os.path.join(u.find_spec('open_clip').submodule_search_locations[0], f); dst = os.path.join(u.find_spec('hpsv2').submodule_search_locations[0], 'src', 'open_clip', f); os.path.exists(dst) or shutil.copy(src, dst)"; fi
	@if [ "$*" = videoreward ]; then envs/$*/bin/python -c "import site; print('$(abspath $(VIDEOALIGN))', file=open(site.getsitepackages()[0] + '/videoalign.pth', 'w'))"; fi
	envs/$*/bin/python -c "import importlib, torch; m = {'vbench': 'vbench', 'imagereward': 'ImageReward', 'hpsv2': 'hpsv2', 'vqascore': 't2v_metrics', 'videoreward': 'inference'}['$*']; importlib.import_module(m); print('$* env: torch', torch.__version__)"
	touch $@
