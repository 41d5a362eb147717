"""The compiled kernels (clipwidgets/searching/_dot16.c and _top.c via native.py): built; float16
scores exact to float32 rounding at each instruction level this CPU has, split over threads, and
safe in a forked child; top-n selection equal to a stable sort."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from clipwidgets import cpu
from clipwidgets.searching import kernels, native
from clipwidgets.searching.kernels import FP32_EPS, Kernel, KernelPlan

LEVELS = {2: "avx512", 1: "avx2"}


def levels_here() -> list[int]:
    """Kernel levels this CPU can run."""
    own = kernels.cpu_class(cpu.cpu_flags())
    return [level for level in (2, 1) if native.level(own, 512) >= level]


def unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_kernel_is_built():
    built = native._c("clipwidgets_dot16") is not None
    assert built, "clipwidgets/searching/_dot16.c was not built: install gcc and run `pip install -e .`"


def test_the_top_n_selection_is_built():
    assert native.top_built(), ("clipwidgets/searching/_top.c was not built: install a C compiler (gcc) "
                                "and run `pip install -e .` again")


@pytest.mark.parametrize(("count", "n"), [(1, 1), (7, 7), (10_000, 1), (10_000, 42), (10_000, 10_000),
                                          (100_003, 500)])
def test_top_n_equals_a_stable_sort(count, n):
    """The n largest, largest first, ties by lower position: scores rounded to few values tie often,
    and -inf (filtered rows) fills some positions."""
    rng = np.random.default_rng(count + n)
    scores = np.round(rng.standard_normal(count), 1).astype(np.float32)
    scores[rng.random(count) < 0.2] = -np.inf
    values, positions = native.top(scores, n)
    expected = np.lexsort((np.arange(count), -scores))[:n]
    assert values.dtype == np.float32 and positions.dtype == np.int64
    np.testing.assert_array_equal(positions, expected)
    np.testing.assert_array_equal(values, scores[expected])


@pytest.mark.parametrize("dim", [64, 520])  # 520: a tail of 8 after the vectors of 16
def test_float64_re_scoring_of_chosen_rows(dim):
    if not levels_here():
        pytest.skip("this CPU has neither AVX512F nor AVX2 with FMA and F16C")
    matrix = unit_rows(3000, dim, seed=dim).astype(np.float16)
    query = unit_rows(1, dim, seed=2)[0]
    rows = np.array([2999, 0, 17, 17, 1500])
    scores = native.exact16(matrix, rows, query, level=levels_here()[0])
    np.testing.assert_allclose(scores, matrix[rows].astype(np.float64) @ query, rtol=0, atol=1e-15)


def test_level_by_cpu_class_and_dimension():
    assert native.level("avx512", 512) == 2 and native.level("avx512", 520) == 1
    assert native.level("avx2", 512) == native.level("avx2", 64) == 1
    assert native.level("avx2", 12) == native.level("avx512", 12) == 0
    assert native.level("other", 512) == 0


@pytest.mark.parametrize(("level", "rows", "dim"), [  # 528 and 520: the loops' tails (128 / 64 values a step)
    (2, 1, 64), (2, 5000, 512), (2, 9001, 528), (2, 20_011, 768),
    (1, 1, 64), (1, 5000, 512), (1, 9001, 520), (1, 20_011, 768)])
def test_scores_equal_float64_within_float32_rounding(level, rows, dim):
    if level not in levels_here():
        pytest.skip(f"this CPU has no {LEVELS[level]}")
    assert native.level(LEVELS[level], dim) == level
    matrix = unit_rows(rows, dim, seed=rows).astype(np.float16)
    query = unit_rows(1, dim, seed=1)[0].astype(np.float32)
    exact = matrix.astype(np.float64) @ query.astype(np.float64)
    one = native.dot16(matrix, query, level=level, threads=1)
    assert one.dtype == np.float32 and one.shape == (rows,)
    assert np.abs(one - exact).max() <= 1e-5 < FP32_EPS
    np.testing.assert_array_equal(native.dot16(matrix, query, level=level, threads=3), one)


def test_kernel_uses_it_where_the_cpu_allows():
    if not levels_here():
        pytest.skip("this CPU has neither AVX512F nor AVX2 with FMA and F16C")
    matrix = unit_rows(40_000, 64, seed=3).astype(np.float16)
    query = unit_rows(1, 64, seed=4)[0].astype(np.float32)
    exact = matrix.astype(np.float64) @ query.astype(np.float64)
    kernel = Kernel(matrix, KernelPlan(copy_fp32=False, cpu=LEVELS[levels_here()[0]]), busy=lambda: False)
    scores, eps = kernel.scores(query)
    assert kernel.last == "fp16 native" and eps == FP32_EPS
    assert np.abs(scores.numpy() - exact).max() <= eps
    other = Kernel(matrix, KernelPlan(copy_fp32=False, cpu="other"), busy=lambda: False)
    slow, slow_eps = other.scores(query)
    assert other.last == "fp16" and slow_eps > eps
    assert np.abs(slow.float().numpy() - exact).max() <= slow_eps


def test_without_the_built_kernel_torch_scores_the_16_bit_rows(monkeypatch):
    monkeypatch.setattr(native, "_c", lambda name: None)  # as after an install without a C compiler
    assert native.level("avx512", 512) == native.level("avx2", 512) == 0
    matrix = unit_rows(40_000, 64, seed=7).astype(np.float16)
    query = unit_rows(1, 64, seed=8)[0].astype(np.float32)
    kernel = Kernel(matrix, KernelPlan(copy_fp32=False, cpu="avx512"), busy=lambda: False)
    scores, eps = kernel.scores(query)
    assert kernel.native == 0 and kernel.last == "fp16"
    assert np.abs(scores.float().numpy() - matrix.astype(np.float64) @ query.astype(np.float64)).max() <= eps


def _score_in_child(queue: multiprocessing.Queue, level: int) -> None:
    matrix = unit_rows(20_000, 64, seed=5).astype(np.float16)
    query = unit_rows(1, 64, seed=6)[0].astype(np.float32)
    queue.put(native.dot16(matrix, query, level=level, threads=2).tolist()[:5])


def test_a_forked_child_gets_threads_of_its_own():
    if not levels_here():
        pytest.skip("this CPU has neither AVX512F nor AVX2 with FMA and F16C")
    level = levels_here()[0]
    matrix = unit_rows(20_000, 64, seed=5).astype(np.float16)
    query = unit_rows(1, 64, seed=6)[0].astype(np.float32)
    expected = native.dot16(matrix, query, level=level, threads=2).tolist()[:5]  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_score_in_child, args=(queue, level))
    child.start()
    try:
        assert queue.get(timeout=60) == expected  # the parent's pool has no threads in the child: hangs
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == 0


def test_a_search_without_any_compiled_kernel_stays_exact(monkeypatch, store_factory):
    """As after an install without a C compiler: BLAS on a float32 copy, torch.topk, numpy re-scoring."""
    from clipwidgets.searcher import Searcher

    monkeypatch.setattr(native, "_c", lambda name: None)
    vectors = unit_rows(3000, 64, seed=14).astype(np.float32)
    path = store_factory(images=[f"img/{i:05d}.jpg" for i in range(3000)], vectors=vectors)
    with Searcher(path) as searcher:
        stored = searcher.store.image_embeddings().astype(np.float64)
        query = unit_rows(1, 64, seed=15)[0].astype(np.float32)
        results = searcher.search(query, k=30)
        assert searcher.kernel in ("fp32", "fp16, one thread")  # the latter on a busy machine
    exact = stored @ query.astype(np.float64)
    assert [hit.index for hit in results] == np.lexsort((np.arange(3000), -exact))[:30].tolist()
