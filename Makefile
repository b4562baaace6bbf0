# `make test` and `make demo` set everything up themselves (idempotent).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.advprompts-installed

.PHONY: setup test demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch/torchvision come from the local wheels first; the project's ranges accept them,
# so nothing below may replace them (checked after install).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.14.1') else 'torch was replaced: ' + v)"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest

# The closed loop on the embedded benchmark with the shipped models (ADVPROMPTS_ZOO_DIR: another build).
demo: setup
	$(BIN)/advprompts demo --out runs/demo

clean:
	rm -rf $(VENV) runs
