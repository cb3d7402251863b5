# `make run` and `make test` work on a fresh clone: they create .venv (if missing) and install into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORK_DIR ?= petpipe-work
PYTEST_ARGS ?=

.PHONY: run test test-fast lint format install clean bench bench-full

$(BIN)/petpipe: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/petpipe

run: install
	$(BIN)/petpipe run --work-dir $(WORK_DIR)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The edit loop: everything but the tests marked slow (training, Beam jobs, subprocess servers).
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff, then the import contracts of pyproject.toml (imports only go down the layers; see docs/architecture.md).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Benchmarks are scripts, never tests: quick (< 5 min) or full (< 30 min on 2 cores) → benchmarks/RESULTS.md.
bench: install
	$(BIN)/python -m benchmarks --quick

bench-full: install
	$(BIN)/python -m benchmarks

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(WORK_DIR) build *.egg-info .pytest_cache
