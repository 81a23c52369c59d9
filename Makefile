# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

demo: install
	$(BIN)/nrr-engine demo --dir nrr-demo --fresh

# the suite on every core (pytest-xdist): on CI's 2 cores 2.9 min instead of 4.5
test: install-test lint
	$(BIN)/python -m pytest -q -n auto

lint: install-test
	$(BIN)/python -m pyflakes nrr_engine tests bench

bench: install
	$(BIN)/python bench/run.py --accounts 100000 --months 24

clean:
	rm -rf $(VENV) nrr-demo export build *.egg-info .pytest_cache
