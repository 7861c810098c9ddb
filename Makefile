# Two commands for a newcomer: `make demo` (set up + run the main job on demo data)
# and `make test` (set up + run the tests). Both create .venv on first use.
# Test tiers (markers given by rule in tests/conftest.py): `make test` all but the slow ones,
# `make test-slow` what needs more than the one shared Ray (clusters, GPUs, faults, budgets, benchmark smokes), `make test-quick`
# what needs neither Ray nor training (the edit-test loop), `make mutation` the mutants the
# quick tier kills in the pure core.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-quick mutation setup clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m orchestrator run --data data --workspace workspace --budget 4m

PYTEST := RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q

test: $(STAMP)
	$(PYTEST) --durations=15 -m "not slow" tests

test-slow: $(STAMP)
	$(PYTEST) --durations=15 -m slow tests

test-quick: $(STAMP)
	$(PYTEST) -m "not ray and not slow" tests

# mutants of the pure core ([tool.mutmut] in pyproject.toml), each run against the quick tier's
# tests that reach it; CPU-heavy, so niced; prints the survivors. One OpenMP thread: mutmut forks
# its children from a process that has used OpenMP, and a forked child can then hang for good,
# asleep (mutmut's timeout counts CPU seconds, so such a hang never times out)
mutation: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 nice -n 10 $(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results

clean:
	rm -rf workspace data
