# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EPOCHS ?=
LR     ?=
DEVICE ?=
SEED   ?=
NB_ARGS := $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(LR),--lr $(LR)) $(if $(DEVICE),--device $(DEVICE)) $(if $(SEED),--seed $(SEED))

.PHONY: setup run train test test-fast lint lab bench clean

setup: $(STAMP)

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,scale]"
	$(BIN)/nbstripout --install --attributes .gitattributes 2>/dev/null || true
	touch $(STAMP)

run: $(STAMP)  ## all notebooks, headless, executed copies in runs/<timestamp>/
	$(BIN)/mtl notebooks $(NB_ARGS)

train: $(STAMP)
	$(BIN)/mtl train $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(LR),--lr $(LR)) $(if $(DEVICE),--device $(DEVICE))

test: $(STAMP)  ## unit + model tests, then the notebooks under nbval
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q --nbval-lax notebooks/ -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check mtl tests bench

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(STAMP)
	$(BIN)/python bench/bench_encode.py

clean:
	rm -rf runs .pytest_cache
