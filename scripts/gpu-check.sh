#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none): the CUDA tests, the model and indexing tests on a
# machine with a GPU, and the model and indexing benchmarks on the GPU. Run from the repository root
# in an environment with clipwidgets' dependencies: bash scripts/gpu-check.sh [PYTHON]
set -euo pipefail
python="${1:-python3}"
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU here'; print(torch.cuda.get_device_name())"
HF_HUB_OFFLINE=1 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_model.py tests/test_indexing.py
"$python" -m benchmarks.bench_model
"$python" -m benchmarks.bench_indexing --device cuda --images 1600 --batch-size 128
