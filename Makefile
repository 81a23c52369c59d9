# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# An editable install leaves the package's own bytecode unwritten where PYTHONDONTWRITEBYTECODE is set (as on
# this CI): every `nrr-engine` process then compiles its ~50 modules again, 0.2-0.4 s each. compileall writes it
# (and rewrites only what an edit made stale).
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -m compileall -q -j 0 nrr_engine

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -m compileall -q -j 0 nrr_engine

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
