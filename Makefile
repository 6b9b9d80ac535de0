# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
ifeq ($(MTL_SYSTEM_ENV),1)
# Inside the Docker image (which sets MTL_SYSTEM_ENV=1): everything is installed already, so use the
# interpreter on PATH and create or download nothing.
BIN    := $(patsubst %/,%,$(dir $(shell command -v python)))
STAMP  :=
else
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
endif
EPOCHS ?=
LR     ?=
DEVICE ?=
SEED   ?=
FULL   ?=
NB_ARGS := $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(LR),--lr $(LR)) $(if $(DEVICE),--device $(DEVICE)) $(if $(SEED),--seed $(SEED)) $(if $(filter 1 true yes,$(FULL)),--full)

.PHONY: setup run figures notebook-outputs train test test-fast lint lab bench clean

setup: $(STAMP)

ifneq ($(MTL_SYSTEM_ENV),1)
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,scale]"
	$(BIN)/nbstripout --install --attributes .gitattributes 2>/dev/null || true
	@# with the filter installed git runs it once on every notebook at the next status (~1 s each): here, not in a test
	git status --porcelain >/dev/null 2>&1 || true
	@# umap's first import compiles its numba functions (~15 s, cached in .cache/numba: mtl.plots sets NUMBA_CACHE_DIR),
	@# here rather than in the first `make run`
	$(BIN)/python -c "import mtl.plots, umap" 2>/dev/null || true
	@# the default backend's one-time ONNX export of the backbone (~6 s, into .cache/onnx), here too
	$(BIN)/python -c "from mtl import paths; from mtl.engine.backbone import resolve_backbone; from mtl.engine.onnx_encoder import export_onnx; export_onnx(resolve_backbone(), paths.CACHE_DIR)"
	touch $(STAMP)
endif

run: $(STAMP)  ## all notebooks, headless: executed copies, figures and result tables in runs/<timestamp>/
	$(BIN)/mtl notebooks $(NB_ARGS)

figures: $(STAMP)  ## the full experiments (hours on a CPU), refreshing the committed figures/ and results/ on purpose
	$(BIN)/mtl notebooks --full --publish $(filter-out --full,$(NB_ARGS))

notebook-outputs: $(STAMP)  ## store the outputs nbval checks, after a change that moves a reported number on purpose
	$(BIN)/mtl notebooks --refresh-outputs

train: $(STAMP)
	$(BIN)/mtl train $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(LR),--lr $(LR)) $(if $(DEVICE),--device $(DEVICE))

NBVAL := --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg -p no:cacheprovider

# One pytest session: tests/ first, then every notebook executed once under nbval (cells marked NBVAL_CHECK_OUTPUT must
# reproduce notebooks/checked_outputs.json), then notebooks/test_*.py on the outputs nbval captured (no second execution).
test: $(STAMP)  ## every test and every notebook: about 5 minutes on 2 cores
	$(BIN)/python -m pytest -q $(NBVAL) tests/ notebooks/

test-fast: $(STAMP)  ## the tests not marked slow, no notebooks: under 45 s
	$(BIN)/python -m pytest -q -m "not slow" -p no:nbval tests/

lint: $(STAMP)
	$(BIN)/ruff check mtl tests bench

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

bench: $(STAMP)
	$(BIN)/python bench/bench_encode.py

clean:
	rm -rf runs .pytest_cache
