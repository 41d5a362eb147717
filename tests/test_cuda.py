"""The CUDA path: fp16 by default, the same indexing and search code. Skipped without a CUDA GPU (as
in CI); run on a GPU machine with `pytest tests/test_cuda.py`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipwidgets.images import load_image
from clipwidgets.indexing import default_workers, index_images
from clipwidgets.model import load_model
from clipwidgets.searcher import Searcher
from clipwidgets.store import EmbeddingStore

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TEXTS = ["a red square", "a photo of a dog", "two people on a beach"]


@pytest.fixture(scope="module")
def cuda_encoder():
    return load_model("tiny")  # device and precision "auto"


def test_auto_picks_cuda_and_fp16(cuda_encoder):
    assert cuda_encoder.device == "cuda" and cuda_encoder.precision == "fp16"
    parameter = next(cuda_encoder.model.parameters())
    assert parameter.is_cuda and parameter.dtype == torch.float16


def test_cuda_fp16_embeddings_agree_with_cpu_fp32(cuda_encoder, tiny_encoder, photo_dir):
    images = [load_image(path) for path in sorted(photo_dir.glob("*.jpg"))]
    for on_gpu, on_cpu in ((cuda_encoder.encode_images(images), tiny_encoder.encode_images(images)),
                           (cuda_encoder.encode_texts(TEXTS), tiny_encoder.encode_texts(TEXTS))):
        assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
        assert float(np.min(np.sum(on_gpu * on_cpu, axis=1))) > 0.999


def test_index_and_search_on_cuda_match_cpu(cuda_encoder, tiny_encoder, photo_dir, tmp_path):
    assert default_workers("cuda") >= 1
    on_gpu = index_images(photo_dir, tmp_path / "gpu.h5", cuda_encoder, batch_size=4, progress=False)
    on_cpu = index_images(photo_dir, tmp_path / "cpu.h5", tiny_encoder, batch_size=4, workers=0,
                          progress=False)
    assert on_gpu.indexed == on_cpu.indexed == 12 and on_gpu.skipped == 0
    with EmbeddingStore.open(tmp_path / "gpu.h5") as gpu_store, \
            EmbeddingStore.open(tmp_path / "cpu.h5") as cpu_store:
        order = [cpu_store.index_of(path) for path in gpu_store.image_paths()]
        a = gpu_store.image_embeddings().astype(np.float32)
        b = cpu_store.image_embeddings().astype(np.float32)[order]
        assert float(np.min(np.sum(a * b, axis=1))) > 0.999
        hits = Searcher(gpu_store, cuda_encoder).search(TEXTS[0], k=5)
        assert len(hits) == 5 and hits[0].score >= hits[-1].score


def test_a_store_built_on_cpu_grows_on_cuda(cuda_encoder, tiny_encoder, photo_dir, tmp_path):
    first = sorted(photo_dir.glob("*.jpg"))[6:]
    for path in first:
        path.rename(path.with_suffix(".later"))
    index_images(photo_dir, tmp_path / "store.h5", tiny_encoder, batch_size=4, workers=0, progress=False)
    for path in first:
        path.with_suffix(".later").rename(path)
    report = index_images(photo_dir, tmp_path / "store.h5", cuda_encoder, batch_size=4, progress=False)
    assert (report.indexed, report.unchanged) == (6, 6)
