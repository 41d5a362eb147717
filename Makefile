# One entry point. `make app` runs the main job, `make test` the tests; each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here (not in pyproject.toml) to the release these machines carry on disk;
# override with `make TORCH_SPEC="torch torchvision" ...` to let pip choose.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Without an NVIDIA GPU (no nvidia-smi, no /dev/nvidia0) torch's CPU build is installed from PyTorch's CPU
# index: about 0.75 GB of torch instead of 5.3 GB of torch + CUDA libraries + triton (docs/indexing.md).
# When that index cannot be reached (as on machines whose pip reads a local on-disk index), the default
# index is used. `make TORCH_BUILD=cuda` or `make TORCH_BUILD=cpu` overrides the detection.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_BUILD ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 || test -e /dev/nvidia0; then echo cuda; else echo cpu; fi)
STAMP := $(VENV)/.installed
export HF_HUB_DISABLE_TELEMETRY = 1

.PHONY: setup install-torch app test lint bench bench-quick notebooks-data clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard clipwidgets/searching/*.[ch])
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(MAKE) --no-print-directory install-torch
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

install-torch:
	@if [ "$(TORCH_BUILD)" = cpu ] && $(BIN)/python -c "import sys, urllib.request; \
			urllib.request.urlopen(sys.argv[1], timeout=10)" "$(TORCH_CPU_INDEX)/torch/" 2>/dev/null; then \
		echo "No NVIDIA GPU: installing torch's CPU build from $(TORCH_CPU_INDEX)"; \
		$(BIN)/python -m pip install --quiet --index-url $(TORCH_CPU_INDEX) $(TORCH_SPEC); \
	else \
		if [ "$(TORCH_BUILD)" = cpu ]; then echo "No NVIDIA GPU, but $(TORCH_CPU_INDEX) cannot be reached:" \
			"installing torch from the default index"; fi; \
		$(BIN)/python -m pip install --quiet $(TORCH_SPEC); \
	fi

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
