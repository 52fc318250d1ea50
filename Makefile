# Two commands do all the set-up on a fresh machine:
#   make run    the main job on the embedded default
#   make test   the test suite
# Each creates the project's environment in .venv when it is missing.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ENVVARS := source tools/env.sh &&

.PHONY: run test test-fast toy bench venv clean

$(BIN)/.installed: requirements-lock.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-lock.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

venv: $(BIN)/.installed

# exit 3 = the pipeline finished but the gate kept the new version as challenger: a verdict, not a failure
run: venv
	$(ENVVARS) $(BIN)/twinflow run || [ $$? -eq 3 ]

toy: venv
	$(ENVVARS) $(BIN)/twinflow toy --data 8gaussians --method twinflow --out reports/toy/8gaussians-twinflow

test: venv
	$(ENVVARS) $(BIN)/python -m pytest -q

test-fast: venv
	$(ENVVARS) $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .prefect
