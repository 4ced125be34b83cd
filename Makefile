# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
# torch 2.13.0: on a machine without a GPU pip may take a CPU build; with a GPU, PyPI's CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/shardplan: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[train,megatron,hf,test,plot]'
	touch $@

install: $(BIN)/shardplan

# Plan a layout for this machine and train a small GPT-2 with it (CPU processes when there is no GPU).
demo: install
	$(BIN)/shardplan launch --model gpt2-demo --cluster auto --out runs/demo --force

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
