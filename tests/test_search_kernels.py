"""The fast kernels: choice by CPU features (mocked) and size, error bounds, no global thread change."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from clipwidgets import cpu
from clipwidgets.errors import InvalidInputError
from clipwidgets.openmp import one_thread
from clipwidgets.searching import kernels
from clipwidgets.searching.blas import blas_thread_count, blas_threads
from clipwidgets.searching.kernels import Kernel, calm, cpu_class, plan_kernel
from clipwidgets.settings import ENV_SEARCH_CPU

AVX512 = frozenset({"sse2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16"})
AVX2 = frozenset({"sse2", "avx", "avx2", "fma", "f16c"})
ARM = frozenset({"fp", "asimd", "bf16"})


@pytest.fixture
def flags(monkeypatch):
    """Set the CPU's feature flags as clipwidgets.cpu reports them."""
    def set_flags(value: frozenset[str]) -> None:
        monkeypatch.setattr(cpu, "cpu_flags", lambda: value)
    return set_flags


def test_cpu_class_reads_the_feature_flags(flags):
    for value, expected in ((AVX512, "avx512"), (AVX2, "avx2"), (ARM, "other"), (frozenset(), "other")):
        flags(value)
        assert cpu_class() == expected
    assert cpu_class(AVX2 - {"f16c"}) == "other"


@pytest.fixture
def built(monkeypatch):
    """Whether the compiled kernels count as built: the 16-bit one (its level as native.level gives it,
    or 0) and the int8 one (native.dot8_runs)."""
    def set_built(value: bool) -> None:
        monkeypatch.setattr(kernels.native, "level", lambda cpu, dim: int(value and cpu != "other"))
        monkeypatch.setattr(kernels.native, "dot8_runs", lambda cpu, dim: value and cpu != "other")
    return set_built


@pytest.fixture
def no_int8(monkeypatch):
    """Small matrices keep a float32 copy for BLAS, as where the int8 kernel was not built."""
    monkeypatch.setattr(kernels.native, "dot8_runs", lambda cpu, dim: False)


@pytest.mark.parametrize(("native", "value", "rows", "copy", "int8"), [
    (False, AVX512, 10_000, True, False), (False, AVX512, 16_384, True, False),
    (False, AVX512, 30_000, False, False), (False, AVX512, 1_000_000, False, False),
    (False, AVX2, 30_000, True, False), (False, AVX2, 40_000, False, False),
    (False, ARM, 100_000, True, False), (False, ARM, 1_000_000, False, False),
    (True, AVX512, 16_384, False, True), (True, AVX512, 131_072, False, True),
    (True, AVX512, 131_073, False, False), (True, AVX2, 30_000, False, True),
    (True, AVX2, 1_000_000, False, False), (True, ARM, 100_000, True, False),
])
def test_a_copy_only_where_it_wins(flags, built, native, value, rows, copy, int8):
    """int8 copies up to 64 MB where the int8 kernel runs; else float32 copies where BLAS wins."""
    flags(value)
    built(native)
    plan = plan_kernel(rows, 512)
    assert plan.copy_fp32 is copy and plan.int8 is int8 and plan.cpu == cpu_class(value)
    assert plan.small is (copy or int8)


def fp16_name(kernel: Kernel, name: str) -> str:
    """`name` of a 16-bit kernel as `kernel` runs it: the compiled one where built (test_native_kernel.py)."""
    return name.replace("fp16", "fp16 native") if kernel.native else name


def unit(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((count, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize(("copy", "busy", "name"), [(True, False, "fp32"),
                                                    (True, True, "fp16, one thread"), (False, False, "fp16")])
def test_every_kernel_stays_within_its_error_bound(dtype, copy, busy, name):
    rng = np.random.default_rng(4)
    matrix = unit(rng, 5000, 512).astype(dtype)
    kernel = Kernel(matrix, kernels.KernelPlan(copy_fp32=copy, cpu="test"), busy=lambda: busy)
    for query in unit(rng, 5, 512).astype(np.float32):
        scores, eps = kernel.scores(query)
        assert kernel.last == ("fp32" if dtype == np.float32 and not copy else name)
        exact = matrix.astype(np.float64) @ query.astype(np.float64)
        error = np.abs(scores.float().numpy() - exact).max()
        assert 0 < error <= eps < 0.01
    batch, eps = kernel.batch_scores(unit(rng, 3, 512).astype(np.float32))
    assert batch.shape == (3, 5000)


def test_busy_machine_changes_the_kernel_per_query(no_int8):
    matrix = unit(np.random.default_rng(1), 1000, 64).astype(np.float16)
    state = {"busy": False}
    kernel = Kernel(matrix, plan_kernel(1000, 64), busy=lambda: state["busy"])
    query = unit(np.random.default_rng(2), 1, 64)[0].astype(np.float32)
    quiet, _ = kernel.scores(query)
    assert kernel.last == "fp32"
    state["busy"] = True
    loaded, _ = kernel.scores(query)
    assert kernel.last == fp16_name(kernel, "fp16, one thread")
    np.testing.assert_allclose(quiet.numpy(), loaded.float().numpy(), atol=2e-3)


def test_one_thread_changes_only_the_calling_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[int] = []
        inside = threading.Event()
        done = threading.Event()

        def other() -> None:
            inside.wait(10)
            torch.mv(torch.ones(8, 8), torch.ones(8))  # another thread keeps using torch meanwhile
            seen.append(torch.get_num_threads())
            done.set()

        worker = threading.Thread(target=other)
        worker.start()
        started: list[int] = []
        with one_thread():
            single = torch.get_num_threads()
            inside.set()
            done.wait(10)
            late = threading.Thread(target=lambda: started.append(torch.get_num_threads()))
            late.start()  # torch.set_num_threads(1) here would give this thread 1 for its whole life
            late.join()
        worker.join()
        assert single == 1  # fails where no OpenMP runtime is loaded (then nothing can be scoped)
        assert seen == [2] and started == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_small_search_leaves_torch_threads_alone(monkeypatch, no_int8):
    monkeypatch.setattr(kernels, "machine_busy", lambda: True)
    matrix = unit(np.random.default_rng(3), 2000, 64).astype(np.float16)
    kernel = Kernel(matrix, plan_kernel(2000, 64))
    before = torch.get_num_threads()
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    kernel.scores(unit(np.random.default_rng(4), 1, 64)[0].astype(np.float32))
    assert kernel.last == fp16_name(kernel, "fp16, one thread")
    assert calls == [] and torch.get_num_threads() == before


def test_a_large_float32_matrix_is_scored_in_place():
    matrix = unit(np.random.default_rng(6), 3000, 64).astype(np.float32)
    kernel = Kernel(matrix, kernels.KernelPlan(copy_fp32=False, cpu="test"), busy=lambda: True)
    assert kernel.half is None and np.shares_memory(kernel.copy, matrix)
    query = unit(np.random.default_rng(7), 1, 64)[0].astype(np.float32)
    scores, eps = kernel.scores(query)
    assert kernel.last == "fp32"
    assert np.abs(scores.numpy() - matrix.astype(np.float64) @ query.astype(np.float64)).max() <= eps
    assert kernel.batch_scores(query[None, :])[0].shape == (1, 3000)


def test_the_search_cpu_setting_only_lowers_the_class(flags, built, monkeypatch):
    built(False)
    flags(AVX512)
    monkeypatch.setenv(ENV_SEARCH_CPU, "avx2")
    assert cpu_class() == "avx2" and cpu_class(AVX512) == "avx512"  # explicit flags are taken as given
    assert plan_kernel(30_000, 512).copy_fp32  # AVX2's threshold: 64 MB of float32
    flags(AVX2)
    monkeypatch.setenv(ENV_SEARCH_CPU, "avx512")
    assert cpu_class() == "avx2"  # never a class above the CPU's own
    monkeypatch.setenv(ENV_SEARCH_CPU, "other")
    assert cpu_class() == "other"
    monkeypatch.setenv(ENV_SEARCH_CPU, "avx3")
    with pytest.raises(InvalidInputError, match="CLIPWIDGETS_SEARCH_CPU='avx3' is not a CPU class"):
        plan_kernel(10, 512)


@pytest.mark.parametrize(("calm_scope", "busy", "name"), [
    (False, False, "fp32"), (True, False, "fp32, one thread"), (True, True, "fp16, one thread")])
def test_small_matrix_kernel_by_calm_scope_and_load(calm_scope, busy, name, no_int8):
    rng = np.random.default_rng(8)
    matrix = unit(rng, 3001, 128).astype(np.float16)
    kernel = Kernel(matrix, plan_kernel(3001, 128), busy=lambda: busy)
    query = unit(rng, 1, 128)[0].astype(np.float32)
    with calm(calm_scope):
        scores, eps = kernel.scores(query)
    assert kernel.last == fp16_name(kernel, name)
    assert np.abs(scores.float().numpy() - matrix.astype(np.float64) @ query.astype(np.float64)).max() <= eps


def test_a_calm_scope_puts_small_products_on_one_blas_thread_and_only_on_this_thread(no_int8):
    before = blas_thread_count()
    if before is None:
        pytest.skip("numpy's BLAS is not OpenBLAS here: nothing to scope")
    rng = np.random.default_rng(9)
    small = Kernel(unit(rng, 500, 32).astype(np.float32), plan_kernel(500, 32), busy=lambda: False)
    large = Kernel(unit(rng, 500, 32).astype(np.float32), kernels.KernelPlan(copy_fp32=False, cpu="test"),
                   busy=lambda: False)
    seen: list[int | None] = []

    def product(matrix: np.ndarray) -> np.ndarray:
        seen.append(blas_thread_count())
        return matrix @ np.ones(32, dtype=np.float32)

    elsewhere: list[int | None] = []
    with calm():
        with calm(False):  # an inner inactive scope keeps the outer one
            small._blas(product)
        large._blas(product)  # a large float32 store keeps BLAS's threads: 2x faster there
        worker = threading.Thread(target=lambda: elsewhere.append(small._blas(product) is not None))
        worker.start()
        worker.join()
    small._blas(product)
    assert seen == [1, before, before, before] and small.last == "fp32" and elsewhere == [True]
    assert blas_thread_count() == before


def test_blas_threads_are_restored_after_the_block():
    before = blas_thread_count()
    if before is None:
        pytest.skip("numpy's BLAS is not OpenBLAS here: nothing to scope")
    with blas_threads(1):
        assert blas_thread_count() == 1
        with blas_threads(1):  # nested: the outer block's saved count survives
            assert blas_thread_count() == 1
        assert blas_thread_count() == 1
    assert blas_thread_count() == before
    with pytest.raises(RuntimeError), blas_threads(1):
        raise RuntimeError("restored on errors too")
    assert blas_thread_count() == before


def test_only_searches_that_ran_the_model_score_calmly(store_factory, tiny_encoder, monkeypatch, no_int8):
    from clipwidgets.searcher import Searcher

    monkeypatch.setattr(kernels, "machine_busy", lambda: False)
    rng = np.random.default_rng(10)
    dim = tiny_encoder.dim
    vectors = unit(rng, 2000, dim).astype(np.float32)
    path = store_factory(images=[f"img/{i:05d}.jpg" for i in range(2000)], vectors=vectors,
                         texts=["caption of 0", "caption of 7"],
                         text_vectors=unit(rng, 2, dim).astype(np.float32), links=[0, 7])
    before = blas_thread_count()
    with Searcher(path, tiny_encoder) as searcher:
        searcher.search("a red square", k=5)
        assert searcher.kernel == "fp32, one thread" and blas_thread_count() == before
        searcher.search("a red square", k=5, offset=5)  # the cached text: the model did not run
        assert searcher.kernel == "fp32"
        searcher.search_many(["a blue circle", "a red square"], k=3)
        assert searcher.kernel == "fp32, one thread"
        query = vectors[7] + 0.01 * vectors[0]
        results = searcher.search(query, k=5)
        assert searcher.kernel == "fp32" and blas_thread_count() == before
    exact = vectors.astype(np.float64) @ (query / np.linalg.norm(query)).astype(np.float32).astype(np.float64)
    assert [hit.index for hit in results] == np.lexsort((np.arange(2000), -exact))[:5].tolist()
    assert results[0].index == 7 and results[0].captions == ("caption of 7",)
    assert all(hit.captions == () for hit in results[1:] if hit.index != 0)


def test_the_float32_copy_starts_on_a_cache_line(no_int8):
    matrix = unit(np.random.default_rng(11), 777, 96).astype(np.float16)
    kernel = Kernel(matrix, plan_kernel(777, 96))
    assert kernel.copy is not None and kernel.copy.ctypes.data % 64 == 0
    assert kernel.copy.flags["C_CONTIGUOUS"] and np.array_equal(kernel.copy, matrix.astype(np.float32))


NUMPY_BLAS_AFTER_FAISS = """
import ctypes, sys
import faiss  # loads its own OpenBLAS, whose path sorts before numpy's
import numpy
from clipwidgets.openmp import loaded_libraries
from clipwidgets.searching.blas import _OPENBLAS, blas_threads
paths = loaded_libraries(_OPENBLAS)
own = [path for path in paths if "/numpy.libs/" in path]
if len(paths) < 2 or not own:
    sys.exit(3)  # not the layout this test is about
library = ctypes.CDLL(own[0])
get = next(getattr(library, name) for name in ("scipy_openblas_get_num_threads64_",
           "scipy_openblas_get_num_threads", "openblas_get_num_threads") if hasattr(library, name))
numpy.ones((64, 64)) @ numpy.ones(64)
before = get()
with blas_threads(1):
    inside = get()
print(before, inside, get())
"""


def test_blas_scope_sets_numpys_own_openblas_when_faiss_loaded_another():
    pytest.importorskip("faiss")
    done = subprocess.run([sys.executable, "-c", NUMPY_BLAS_AFTER_FAISS], capture_output=True, text=True,
                          timeout=120)
    if done.returncode == 3:
        pytest.skip("numpy's OpenBLAS is not a wheel's copy in numpy.libs beside faiss's own here")
    assert done.returncode == 0, done.stderr
    before, inside, after = map(int, done.stdout.split())
    assert inside == 1 and before == after >= 1
