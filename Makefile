# Quick start: `make train` trains the default experiment, `make test` runs the test suite.
# Both create .venv and install the pinned dependencies the first time (a second call skips it).
# pip does not byte-compile the 6 GB it installs (here the whole install took 107 s with it, 86 and
# 89 s without; compileall over the venv on both cores would add 27 to 35 s); each module is
# compiled when first imported, and Python keeps that bytecode: the recipes run without
# PYTHONDONTWRITEBYTECODE, which some machines set and which would make every process compile
# torch's modules again.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_SILENT ?= true
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install train test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	touch $(STAMP)

# make train's preset (conf/experiment/); `make train EXPERIMENT=` trains plain train.py
EXPERIMENT ?= sprites_vamp

train: $(STAMP)
	$(BIN)/python train.py $(if $(EXPERIMENT),experiment=$(EXPERIMENT)) $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# samples/s of train.py against hand-written loops (bench/bench.py; MNIST under ../shared/data)
bench: $(STAMP)
	$(BIN)/python bench/bench.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf outputs .pytest_cache
