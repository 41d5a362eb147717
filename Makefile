# One entry point. `make app` runs the main job, `make test` the tests; each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here (not in pyproject.toml) to the release these machines carry on disk;
# override with `make TORCH_SPEC="torch torchvision" ...` to let pip choose.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
export HF_HUB_DISABLE_TELEMETRY = 1

.PHONY: setup app test lint bench bench-quick notebooks-data clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

# e.g. `make app APP_ARGS="--model tiny --images path/to/photos --store store/photos.h5"` offline
APP_ARGS ?=
app: $(STAMP)
	$(BIN)/clipwidgets app $(APP_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	HF_HUB_OFFLINE=1 $(BIN)/pytest
	bash scripts/test-notebooks.sh

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
