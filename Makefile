# Fresh machine: `make demo`, `make test` or `make test-fast` (the tests not marked slow). Each creates .venv
# and installs cnnlab into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned to the releases this project's machines hold on disk; elsewhere, override with your own build,
# e.g. `make install TORCH="torch torchvision"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= demo-out

.PHONY: install demo test test-fast lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,ray,export,tensorboard,explain,serve,notebook,timm,dicom,tune]'
	touch $@

demo: install
	$(BIN)/python -m cnnlab.cli.demo --out $(DEMO_DIR)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
