# Quick start: `make run` (set up + dvc repro), `make test` (set up + pytest).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast report bench check-real check-gguf clean-venv

# llama.cpp's GGUF converter (export stage), from the llama-cpp-python sdist pinned in
# finetune/export/converter.py: fetched once into ~/.cache/finetune/sdist, sha256-checked, extracted
# into .venv/share/llama.cpp with its gguf-py installed; redone when that file (the pin) changes.
CONVERTER := $(VENV)/share/llama.cpp/VERSION

setup: $(STAMP) $(CONVERTER)

# Reinstall only when the pins change.
$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0  # first, alone: a CPU/CUDA build of the pinned version
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

$(CONVERTER): $(STAMP) finetune/export/converter.py
	$(BIN)/python -m finetune.export.converter install

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Two workers, one test file each at a time (module fixtures are built once); one thread per
# process: the tiny models gain nothing from more, and spinning OpenMP threads slow the other worker.
# Both tiers: tests/unit (in-process, small fixtures) and tests/integration (DVC, stages and the
# pipeline in subprocesses, training).
TEST_ENV := PATH="$(CURDIR)/$(BIN):$$PATH" OMP_NUM_THREADS=1
test: setup
	$(BIN)/ruff format --check .  # one formatter (ruff.toml); `ruff format .` fixes it
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

# The edit loop: the unit tier only (under 3 minutes on 2 cores).
test-fast: setup
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 2 --dist loadfile tests/unit

# The offline report (metrics/report.html), after whatever it depends on.
report: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro report

bench: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks run

# The whole pipeline on a random Qwen2-0.5B-architecture model with the real tokenizer (~5 min on
# 2 CPU cores): run it after changing train, evaluate, merge or model loading.
check-real: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.check_real --family $(or $(FAMILY),qwen2)  # make check-real FAMILY=llama (or phi3)

# The exported GGUF files checked by llama.cpp itself (opt-in: the first run builds llama-cpp-python from
# its pinned sdist, ~7 min on 2 cores, cached): logits and greedy answers vs the merged model, and
# negative controls. After `make run` (models/gguf); --real: on the Qwen2-0.5B architecture.
check-gguf: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.check_gguf

clean-venv:
	rm -rf $(VENV)
