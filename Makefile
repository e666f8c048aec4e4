# Quick start: `make demo` (reproduce the paper's claims on CPU) and `make test` (the test suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow bench mutate clean

install: $(STAMP)

# torch is pinned to the local CPU build here: a looser requirement makes pip fetch a CUDA build.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/probseq demo --out reports/demo

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(VENV)/bin/probseq bench --preset quick --out reports/bench.json

# Mutation testing of the fast paths (src/probseq/ops/): every listed bug must fail the tests (scripts/mutate.py).
mutate: install
	$(PY) scripts/mutate.py

clean:
	rm -rf $(VENV) reports .pytest_cache
