# Two entry points (see README): `make demo` runs the main job, `make test` the test suite.
# Both create the virtual environment .venv and install byzlearn into it on first use.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.byzlearn-installed

.PHONY: demo test lint bench check clean

demo: $(STAMP)
	$(VENV)/bin/byzlearn demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

# The quick reproductions re-run and compared with their committed results (README "Reproducible numbers").
DATA ?= ../shared/data/mnist
check: $(STAMP)
	$(VENV)/bin/byzlearn reproduce draco-table1 --check --data-dir $(DATA)

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/simulator.py

# constraints.txt pins the exact torch of the development set-up (pyproject.toml takes a range); the set-up
# stays on Python 3.11, whose local torch 2.13.0 CPU wheel the pin selects.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "the development set-up uses Python 3.11: make PYTHON=python3.11"'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test,flower]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
