# Quick start: `make run` (set up + dvc repro), `make test` (set up + pytest).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast report bench check-real clean-venv

setup: $(STAMP)

# Reinstall only when the pins change.
$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0  # first, alone: a CPU/CUDA build of the pinned version
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Two workers, one test file each at a time (module fixtures are built once); one thread per
# process: the tiny models gain nothing from more, and spinning OpenMP threads slow the other worker.
# Both tiers: tests/unit (in-process, small fixtures) and tests/integration (DVC, stages and the
# pipeline in subprocesses, training).
TEST_ENV := PATH="$(CURDIR)/$(BIN):$$PATH" OMP_NUM_THREADS=1
test: setup
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
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks.check_real --family $(or $(FAMILY),qwen2)  # make check-real FAMILY=llama

clean-venv:
	rm -rf $(VENV)
