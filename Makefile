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

# The closed loop on the embedded benchmark (`advprompts demo`) needs the embedded weights (or
# ADVPROMPTS_ZOO_DIR pointing to a `zoo build`); until they are shipped, the quickest real
# end-to-end run on tiny random models: GAP optimisation, then label-preserving generation.
demo: setup
	@if [ -f "$${ADVPROMPTS_ZOO_DIR:-src/advprompts/zoo/embedded}/manifest.json" ]; then \
		$(BIN)/advprompts demo --out runs/demo; \
	else \
		echo "embedded weights not shipped yet: running the engine on tiny random models instead"; \
		$(BIN)/advprompts optimize --config tiny-gap --out runs/demo/gap --overwrite && \
		$(BIN)/advprompts generate --model tiny --source tiny-synth:train --prompt-file runs/demo/gap/prompt_c0-s0.safetensors \
			--prompt-file runs/demo/gap/prompt_c1-s0.safetensors --steps 2 --guidance-scale 3 --out runs/demo/generated --overwrite && \
		echo "demo outputs: runs/demo/gap (prompts, log.csv) and runs/demo/generated (images/ + metadata.csv)"; \
	fi

clean:
	rm -rf $(VENV) runs
