# p2pnode developer and CI entry points.  `make demo` and `make test` are the
# two commands the README promises; .ci/run calls `make test` and nothing else.

# bash + pipefail so a failing pip is not hidden behind the grep that filters
# its harmless "WARNING: Location ... is ignored" noise.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Touched after a successful install; the install reruns whenever
# pyproject.toml is newer (deps or tool config changed).
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
PIP_QUIET := 2>&1 | { grep -v 'WARNING: Location' || true; }

BENCHES := $(filter-out bench/common.py,$(wildcard bench/*.py))

.PHONY: help sysdeps venv test lint typecheck pytest demo soak mutants mutant-sample bench clean distclean

help:
	@echo "make venv   - create $(VENV) (if missing) and install -e '.[dev]' when pyproject.toml changed"
	@echo "make test   - ruff + import contracts + mypy + the whole pytest suite (PYTEST_ARGS='...')"
	@echo "make lint   - ruff + import contracts (lint-imports) + mypy only"
	@echo "make demo   - start 3 real peers on loopback, run sample jobs, stop them"
	@echo "make soak   - every simnet workload in the harsh modes, 10,000 seeds each (hours)"
	@echo "make mutants - plant each catalogued bug in a scratch copy; the sweeps must kill it"
	@echo "make mutant-sample - a seeded sample of mechanical mutants of protocols/ against the core tests"
	@echo "make bench  - run every bench/*.py"
	@echo "make clean  - remove caches and build output (distclean also removes $(VENV))"

venv: sysdeps $(STAMP)

# py-libp2p compiles fastecdsa against GMP; bubblewrap sandboxes the process
# executor.  On a fresh Debian machine install the system packages when they
# are missing (as root), else say what to install.
sysdeps:
	@if ! command -v gcc >/dev/null || [ -z "$$(ls /usr/include/gmp.h /usr/include/*/gmp.h 2>/dev/null)" ] \
	    || ! command -v bwrap >/dev/null \
	    || ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing gcc, libgmp-dev, python3-venv, bubblewrap (apt-get)"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				gcc libgmp-dev python3-venv bubblewrap >/dev/null; \
		else \
			echo "missing system packages: install gcc, libgmp-dev, python3-venv and bubblewrap" >&2; exit 1; \
		fi; \
	fi

# Order-only on the directory: an existing venv is never recreated just
# because its mtime changed.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' $(PIP_QUIET)
	touch $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# lint-imports: the layering contracts of pyproject.toml [tool.importlinter]
# (docs/architecture.md, "Layers").
LINT_IMPORTS := $(VENV)/bin/lint-imports --no-logo --no-cache

lint: venv
	$(PY) -m ruff check .
	$(LINT_IMPORTS)
	$(PY) -m mypy

typecheck: venv
	$(PY) -m mypy

pytest: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

# All tests, slow ones included: CI runs exactly this (and logs the 30 slowest).
test: venv
	$(PY) -m ruff check .
	$(LINT_IMPORTS)
	$(PY) -m mypy
	$(PY) -m pytest -q --durations=30 $(PYTEST_ARGS)

# Three real peers on loopback run sample jobs (scripts/demo.py); a Docker job
# too when an engine answers.  DEMO_ARGS='--keep --data-dir demo-data' keeps state.
DEMO_ARGS ?=
demo: venv
	$(PY) scripts/demo.py $(DEMO_ARGS)

# simnet/soak.py: 10,000 seeds of each of its profiles, i.e. of every workload
# (tails, pauses, skew, byzantine peers, crashes, partitions, calm mode); a few
# hours on two idle cores.  SOAK_SEEDS=A..B for a shorter run.
SOAK_SEEDS ?= 0..9999
soak: venv
	$(PY) -m simnet.soak --seeds $(SOAK_SEEDS)

# simnet/mutants.py: the mutation catalogue and its kill matrix (MUTANTS_ARGS='--output json').
MUTANTS_ARGS ?=
mutants: venv
	$(PY) -m simnet.mutants $(MUTANTS_ARGS)

# scripts/mutant_sample.py: a seeded random sample of mechanical mutants of protocols/,
# each run against the core suites (slow: minutes per surviving mutant; not in CI).
MUTANT_SAMPLE_ARGS ?= --seed 1 --count 40
mutant-sample: venv
	$(PY) scripts/mutant_sample.py $(MUTANT_SAMPLE_ARGS)

bench: venv
	@if [ -z "$(BENCHES)" ]; then echo "no bench/*.py yet"; fi
	@for b in $(BENCHES); do \
		echo "== $$b"; \
		$(PY) "$$b"; \
	done

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -f $(STAMP)

distclean: clean
	rm -rf $(VENV)
