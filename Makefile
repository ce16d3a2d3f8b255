# Everything a new user needs: `make demo` and `make test`. Both create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.vitprune-installed
DEMO_DIR ?= demo-out

.PHONY: install demo test test-slow lint format clean

install: $(INSTALLED)

# Plain `torch` from PyPI (the CUDA build, which also runs on CPU): see FIELD_NOTES on why not the CPU wheel.
$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "vitprune needs Python >= 3.11 (set PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

demo: $(INSTALLED)
	@echo "== a policy for DeiT-S: half the heads and MLP neurons, 3/4 of q/k dims, tokens x0.9 per layer from layer 4"
	$(VENV)/bin/vitprune policy deit_small_patch16_224 --keep-heads 0.5 --keep-qk 0.75 --keep-mlp 0.5 \
		--token-keep 0.9 --token-start 4 --drop-act 2 -o $(DEMO_DIR)/policy.json
	@echo "== its cost, from the policy alone"
	$(VENV)/bin/vitprune cost $(DEMO_DIR)/policy.json | head -9
	@echo "== the physically pruned model (random weights: no downloads on this machine)"
	$(VENV)/bin/vitprune apply $(DEMO_DIR)/policy.json --out $(DEMO_DIR)/model

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
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
