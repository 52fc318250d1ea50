# Two commands do all the set-up on a fresh machine:
#   make run    the main job on the embedded default
#   make test   the test suite
# Each creates the project's environment in .venv when it is missing.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ENVVARS := source tools/env.sh &&

.PHONY: run test test-fast lint format toy venv clean

# pip byte-compiles what it installs one file after another (130 of the install's 180 s here); compileall on every
# core does the same work in about half the time. Files that only a newer Python can parse fail to compile, and
# are skipped there as pip skips them (quiet=2 hides those messages; a module without its .pyc still imports).
define COMPILE_SITE_PACKAGES
import compileall, sysconfig
compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=2, workers=0)
endef
export COMPILE_SITE_PACKAGES

$(BIN)/.installed: requirements-lock.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -r requirements-lock.txt
	$(BIN)/python -c "$$COMPILE_SITE_PACKAGES"
	$(BIN)/pip install -q --no-deps -e .
	touch $@

venv: $(BIN)/.installed

# exit 3 = the pipeline finished but the gate kept the new version as challenger: a verdict, not a failure
run: venv
	$(ENVVARS) $(BIN)/twinflow run || [ $$? -eq 3 ]

toy: venv
	$(ENVVARS) $(BIN)/twinflow toy --data 8gaussians --method twinflow --out reports/toy/8gaussians-twinflow

# two pytest workers, a test file each at a time: most tests wait on a server or a subprocess, so on 2 cores the
# suite takes about half the time it takes serially (TEST_WORKERS=0 runs it in one process). --no-loadscope-reorder
# keeps the order tests/conftest.py sets (files with slow tests first); xdist would else sort files by their number
# of tests, which hands the one-test end-to-end files out last
TEST_WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: venv
	$(ENVVARS) $(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

test-fast: venv
	$(ENVVARS) $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_PARALLEL)

# ruff's lint (E, F, W, I, B, UP) and format check, configured in pyproject.toml; `make format` applies both
lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf $(VENV) .prefect
