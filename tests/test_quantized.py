"""The int8 fast pass (clipwidgets/searching/quantized.py, _dot8.c): exact int32 sums, scores within
their proven bound on awkward data, the kernel small stores get, and exact rankings through it."""

from __future__ import annotations

import numpy as np
import pytest

from clipwidgets import cpu
from clipwidgets.searching import kernels, native
from clipwidgets.searching.kernels import FP32_EPS, Kernel, KernelPlan, plan_kernel
from clipwidgets.searching.quantized import Int8Rows

CPU = kernels.cpu_class(cpu.cpu_flags())
pytestmark = pytest.mark.skipif(not native.dot8_runs(CPU, 512),
                                reason="the int8 kernel was not built or this CPU has no AVX2")


def unit_rows(count: int, dim: int, seed: int, *, outliers: float = 1.0) -> np.ndarray:
    """Random unit rows; `outliers` scales three dimensions, as CLIP's few large ones."""
    rows = np.random.default_rng(seed).standard_normal((count, dim))
    rows[:, :3] *= outliers
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_int8_kernel_is_built():
    assert native.dot8_runs("avx2", 512) and native.dot8_runs("avx512", 64)
    assert not native.dot8_runs("other", 512) and not native.dot8_runs("avx2", 520)


@pytest.mark.parametrize(("rows", "dim"), [(1, 16), (999, 80), (9001, 512), (20_011, 528)])
def test_int32_sums_are_exact_and_threads_agree(rows, dim):
    rng = np.random.default_rng(rows)
    matrix = rng.integers(-127, 128, size=(rows, dim), dtype=np.int8)
    limit = (2**31 - 1) // (127 * dim)
    query = rng.integers(-limit, limit + 1, size=dim).astype(np.int16)
    scales = rng.random(rows).astype(np.float32)
    kernel = native.Int8Matrix(matrix, scales, np.ones(dim, dtype=np.float32))
    one = kernel.scores(query, 0.5, threads=1)
    sums = matrix.astype(np.int64) @ query.astype(np.int64)
    np.testing.assert_allclose(one, (sums * scales.astype(np.float64) * 0.5).astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(kernel.scores(query, 0.5, threads=3), one)


def test_the_largest_sums_do_not_overflow():
    """Every value at its limit: 127 * limit * dim is just below 2**31."""
    dim = 768
    limit = Int8Rows(np.ones((1, dim), dtype=np.float32)).limit
    matrix = np.full((3, dim), 127, dtype=np.int8)
    matrix[1] = -127
    query = np.full(dim, limit, dtype=np.int16)
    kernel = native.Int8Matrix(matrix, np.ones(3, dtype=np.float32), np.ones(dim, dtype=np.float32))
    out = kernel.scores(query, 1.0, threads=1)
    assert 127 * limit * dim < 2**31
    largest = 127.0 * limit * dim
    np.testing.assert_allclose(out, [largest, -largest, largest], rtol=1e-6)


@pytest.mark.parametrize(("name", "matrix"), [
    ("random unit rows", unit_rows(5000, 512, seed=1)),
    ("large dimensions", unit_rows(5000, 512, seed=2, outliers=30.0)),
    ("float16 rows", unit_rows(3000, 768, seed=3).astype(np.float16)),
    ("zero rows and dimensions", np.concatenate([np.zeros((5, 64)), unit_rows(500, 64, seed=4)])
     * np.where(np.arange(64) % 7 == 0, 0.0, 1.0)),
    ("near duplicates", unit_rows(1, 512, seed=5) + 1e-3 * unit_rows(2000, 512, seed=6)),
])
def test_fast_scores_stay_within_the_proven_bound(name, matrix):
    matrix = np.ascontiguousarray(matrix.astype(np.float16 if matrix.dtype == np.float16 else np.float32))
    quantized = Int8Rows(matrix)
    queries = list(unit_rows(4, matrix.shape[1], seed=7)) + [matrix[-1] / np.linalg.norm(matrix[-1])]
    one_hot = np.zeros(matrix.shape[1])
    one_hot[1] = 1.0
    for query in [*queries, one_hot]:
        query = query.astype(np.float32)
        scores, eps = quantized.scores(query, threads=2, fp32_eps=FP32_EPS)
        exact = matrix.astype(np.float64) @ query.astype(np.float64)
        assert np.abs(scores - exact).max() <= eps, name
        assert eps < 0.05, name  # tight enough to leave few rows for the float64 re-scoring


def test_small_matrices_get_the_int8_kernel_and_a_busy_machine_one_thread():
    matrix = unit_rows(20_000, 512, seed=8).astype(np.float16)
    state = {"busy": False}
    plan = plan_kernel(len(matrix), 512)
    assert plan.int8 and not plan.copy_fp32
    kernel = Kernel(matrix, plan, busy=lambda: state["busy"])
    assert kernel.copy is None and np.shares_memory(kernel.half_rows, matrix)  # no float32 copy
    query = unit_rows(1, 512, seed=9)[0].astype(np.float32)
    quiet, eps = kernel.scores(query)
    assert kernel.last == "int8"
    state["busy"] = True
    loaded, _ = kernel.scores(query)
    assert kernel.last == "int8, one thread"
    np.testing.assert_array_equal(quiet.numpy(), loaded.numpy())
    assert np.abs(quiet.numpy() - matrix.astype(np.float64) @ query.astype(np.float64)).max() <= eps


def test_searches_through_the_int8_kernel_rank_like_float64(store_factory):
    """Close rows (many within the int8 bound of the k-th) still rank exactly, ties by row."""
    from clipwidgets.searcher import Searcher

    base = unit_rows(1, 64, seed=10)
    vectors = base + 0.02 * unit_rows(3000, 64, seed=11)
    vectors[100] = vectors[200]  # a tie
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    path = store_factory(images=[f"img/{i:05d}.jpg" for i in range(3000)], vectors=vectors)
    with Searcher(path) as searcher:
        stored = searcher.store.image_embeddings().astype(np.float64)
        for seed in range(3):
            query = (base[0] + 0.01 * unit_rows(1, 64, seed=20 + seed)[0]).astype(np.float32)
            query /= np.linalg.norm(query)
            results = searcher.search(query, k=25)
            assert searcher.kernel in ("int8", "int8, one thread")
            exact = stored @ query.astype(np.float64)
            assert [hit.index for hit in results] == np.lexsort((np.arange(3000), -exact))[:25].tolist()
        query = vectors[100] / np.linalg.norm(vectors[100])
        assert [hit.index for hit in searcher.search(query, k=2)] == [100, 200]


def test_a_plan_for_int8_scores_float32_stores_too():
    matrix = unit_rows(700, 64, seed=12).astype(np.float32)
    kernel = Kernel(matrix, KernelPlan(copy_fp32=False, cpu=CPU, int8=True), busy=lambda: False)
    query = unit_rows(1, 64, seed=13)[0].astype(np.float32)
    scores, eps = kernel.scores(query)
    assert kernel.last == "int8"
    assert np.abs(scores.numpy() - matrix.astype(np.float64) @ query.astype(np.float64)).max() <= eps
    batch, _ = kernel.batch_scores(query[None, :])  # batches stay on BLAS with the store's own float32
    assert batch.shape == (1, 700)
