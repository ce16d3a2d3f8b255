# Everything a new user needs: `make demo` and `make test`. Both create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.vitprune-installed

.PHONY: install demo test test-slow format clean

install: $(INSTALLED)

# Plain `torch` from PyPI (the CUDA build, which also runs on CPU): see FIELD_NOTES on why not the CPU wheel.
$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "vitprune needs Python >= 3.11 (set PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# The embedded default search (search.yaml): digits, the small ViT vitprune trains itself, 50 % of
# dense MACs, 24 trials, 2 at a time. Each demo writes a new run directory under runs/.
demo: $(INSTALLED)
	$(eval RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S))
	$(VENV)/bin/vitprune search search.yaml --run-dir $(RUN)
	$(VENV)/bin/vitprune export $(RUN) --out $(RUN)/exported

test: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

test-slow: $(INSTALLED)
	$(PY) -m pytest -m slow

format: $(INSTALLED)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf .pytest_cache .ruff_cache
