# Two entry points (see README): `make demo` runs the main job, `make test` the test suite.
# Both create the virtual environment .venv and install byzlearn into it on first use.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.byzlearn-installed

.PHONY: demo test bench clean

demo: $(STAMP)
	$(VENV)/bin/byzlearn demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/simulator.py

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "byzlearn needs Python 3.11: make PYTHON=python3.11"'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
