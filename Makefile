# Two commands for a newcomer: `make demo` (set up + run the main job on demo data)
# and `make test` (set up + run the tests). Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m orchestrator run --data data --workspace workspace --budget 4m

test: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q --durations=15 tests

clean:
	rm -rf workspace data
