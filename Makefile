# Quick start: `make demo` (reproduce the paper's claims on CPU) and `make test` (the test suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast test-slow bench mutate clean corpus cpu-presets evidence evidence-stop

install: $(STAMP)

# Everything (.[all]: the library, training, experiments, tests) at the exact versions of constraints.txt, torch
# first: its pin there (2.13.0) is the local CPU build; a looser requirement makes pip fetch a CUDA build.
$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all]'
	touch $(STAMP)

# The compiled CPU covariance scan (src/probseq/ops/bayes/native.py): built once per machine and source into
# ~/.cache/probseq/native; the demo runs without it if it cannot be built, the tests require it.
NATIVE := $(PY) -c "from probseq.ops.bayes.native import build; build()"

demo: install
	-$(NATIVE)
	$(VENV)/bin/probseq reproduce --preset quick --out reports/demo

test: install
	$(NATIVE)
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts
	PROBSEQ_NATIVE=1 $(PY) -m pytest -q

# The unit tests only: neither the slow ones nor the end-to-end runs (marker integration; tests/README.md).
test-fast: install
	$(PY) -m pytest -q -m "not slow and not integration"

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(VENV)/bin/probseq bench --preset quick --out reports/bench.json

# Mutation testing of the fast paths (src/probseq/ops/): every listed bug must fail the tests (scripts/mutate.py).
mutate: install
	$(PY) scripts/mutate.py

clean:
	rm -rf $(VENV) reports .pytest_cache

# Offline text corpus for pretraining the distillation teacher (Debian's KJV Bible and Python docs, plus
# generated retrieval-format text; docs/distillation.md). Downloads ~15 MB from Debian's registry.
corpus: install
	$(PY) -c "from probseq.data import prepare_corpus; print(prepare_corpus().root)"

# Every long evidence run in order (mqar, recall, pretrain, distill ×2, ruler ×3, reproduce, then mqar's Bayesian
# Layer and GDN with a third lr, 1e-3; mqar with the stationary retention; mqar with the learned retention
# started at ρ = 1), background, resumable.
evidence: install corpus
	mkdir -p $(HOME)/.cache/probseq/experiments
	nohup scripts/run_evidence.sh >> $(HOME)/.cache/probseq/experiments/evidence.log 2>&1 &
	@echo "starting (unless one is running already); log: ~/.cache/probseq/experiments/evidence.log; rerun 'make evidence' to resume"

# The two cpu sweeps only (probseq mqar / recall --preset cpu, then the cpu report), background, resumable.
cpu-presets: install
	mkdir -p $(HOME)/.cache/probseq/experiments
	nohup scripts/run_evidence.sh mqar_cpu recall_cpu reproduce_cpu >> $(HOME)/.cache/probseq/experiments/evidence.log 2>&1 &
	@echo "starting (unless one is running already); log: ~/.cache/probseq/experiments/evidence.log; rerun 'make cpu-presets' to resume"

# Stop the background evidence runs (their checkpoints stay; 'make evidence' resumes).
evidence-stop:
	@pkill -TERM -f '[s]cripts/run_evidence.sh' && echo "stopping; 'make evidence' resumes" || echo "no evidence run is running"
