"""Fast scoring kernels: which one runs is chosen by the CPU's features and the matrix's size.

- "int8": the compiled int8 kernel (quantized.py, _dot8.c) on an int8 copy of a small matrix (up to
  64 MB of int8: 128k rows at 512-d), where it was built and the CPU has AVX2. A byte per value:
  half the reads of float16, and its error bound (~0.01) only widens the band re-scored in float64.
  10k x 512 on the 2-core AVX512 EPYC: a search 0.20-0.22 ms against 0.23-0.26 with the float32
  copy; 100k: 1.4 against 2.4 ms (float16 in place); with the caches cold, 0.46 against 0.88 ms at 10k.
- "fp32": BLAS matrix-vector product on a float32 copy, for small matrices where the int8 kernel
  does not run (the copy doubles their memory): there the matrix sits in the CPU's cache and BLAS is
  fastest.
- "fp16 native": the compiled kernel (native.py, _dot16.c) on the 16-bit matrix itself, where it was
  built and the CPU has AVX512F or AVX2 with FMA and F16C: it reads the matrix at the memory-bandwidth
  floor (1M x 512: 1.03x the time of reading it once; 10M: 1.1x), so it wins as soon as the matrix
  leaves the cache (20k rows: 0.25 against BLAS's 0.44 ms).
- "fp16": torch.mv on the 16-bit matrix (float32 accumulation), where the compiled kernel is not
  available. It is bound by its conversions, not by memory: ~18G values/s on those 2 cores, 1.9x
  the read floor at 10M rows.

Two conditions change the choice per query:

- A busy machine (load average at or above the number of CPUs): a short multi-threaded kernel stalls
  whenever another process holds a core (median 20 ms against 0.6 ms at 10k rows here), so small
  matrices are then scored on one thread ("int8, one thread", "fp16 native, one thread", or "fp16,
  one thread" through the calling thread's own OpenMP setting, clipwidgets.openmp.one_thread).
- A calm scope (`calm()`, which the Searcher opens when the query ran the model): numpy's OpenBLAS
  keeps its worker threads spinning for about 0.1 s after a product, and after a 0.15 ms search they
  took a core from the next text-encoder call (a text query measured 40.8 ms back to back, the
  encoder alone 20.8 ms). Inside the scope small products run on one BLAS thread ("fp32, one
  thread"; blas.py), which wakes no worker; the 0.1-0.2 ms this costs is hidden in a 20 ms encode.
  Outside it (vector queries, "more like this", paging with a cached text) BLAS keeps its threads.

No global thread count is left changed. `CLIPWIDGETS_SEARCH_CPU` (clipwidgets.settings.ENV_SEARCH_CPU)
= "avx2" or "other" makes the choice as on that lesser CPU class (benchmarks emulating an AVX2-only
CPU); a class above the CPU's own is never used.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import cpu
from ..errors import InvalidInputError
from ..openmp import one_thread
from ..settings import ENV_SEARCH_CPU
from . import native
from .blas import blas_threads
from .quantized import Int8Rows

__all__ = ["CPU_CLASSES", "FP16_EPS", "FP32_COPY_BYTES", "FP32_EPS", "INT8_COPY_BYTES", "ONE_THREAD_BYTES",
           "Kernel",
           "KernelPlan", "aligned_float32", "calm", "cpu_class", "machine_busy", "plan_kernel", "score",
           "score_batch", "tensor"]

CPU_CLASSES = ("other", "avx2", "avx512")  # from least to most capable
# Largest matrix (rows x dim values: bytes of its int8 copy) that keeps an int8 copy, where the compiled
# int8 kernel runs (quantized.py).
INT8_COPY_BYTES = 64 << 20
# Largest float32 copy (bytes) scored by BLAS instead of a 16-bit kernel: "native" where the compiled
# kernel runs (crossover between 10k and 20k rows at 512-d, on AVX512 and emulated AVX2 alike: the
# copy must stay in the L3 cache), else by CPU class for torch.mv (AVX512: between 10k and 100k rows;
# AVX2: torch.mv is 2x slower than BLAS at 10k there, issue 18, so the copy pays for longer).
FP32_COPY_BYTES = {"native": 32 << 20, "avx512": 32 << 20, "avx2": 64 << 20, "other": 256 << 20}
# 16-bit matrices up to this size run on one thread when the machine is busy (see the module doc).
ONE_THREAD_BYTES = 32 << 20
# Error bound of the 16-bit kernel besides the query's own float16 rounding: the float16 result is
# rounded by at most 2**-12 for |score| < 1, float32 accumulation adds ~D * 2**-24; 1e-3 is generous.
FP16_EPS = 1e-3
FP32_EPS = 1e-4  # BLAS on float32: float32 rounding of products and sums only
_BATCH_ROWS = 2048  # rows widened to float32 at a time by the batch kernel
_CPUS = os.cpu_count() or 1
_scope = threading.local()  # .calm: inside calm() on this thread


def cpu_class(flags: frozenset[str] | None = None) -> str:
    """"avx512" (AVX512F with F16C), "avx2" (AVX2 with F16C and FMA) or "other" (no fast 16-bit
    conversions known: ARM, older x86). Without `flags`, the CPU's own (cpu.cpu_flags()), lowered to
    the class `CLIPWIDGETS_SEARCH_CPU` names, if it names a lesser one."""
    own = cpu.cpu_flags() if flags is None else flags
    if {"avx512f", "f16c"} <= own:
        kind = "avx512"
    elif {"avx2", "f16c", "fma"} <= own:
        kind = "avx2"
    else:
        kind = "other"
    wanted = os.environ.get(ENV_SEARCH_CPU, "").strip().lower()
    if flags is not None or not wanted:
        return kind
    if wanted not in CPU_CLASSES:
        raise InvalidInputError(f"{ENV_SEARCH_CPU}={wanted!r} is not a CPU class: use one of "
                                f"{', '.join(CPU_CLASSES)}, or unset it to use this CPU's own ({kind}).")
    return min(wanted, kind, key=CPU_CLASSES.index)  # never a class above the CPU's own


def machine_busy() -> bool:
    """True when the 1-minute load average is at least the number of CPUs (False where unknown)."""
    try:
        return os.getloadavg()[0] >= _CPUS
    except OSError:
        return False


class calm:  # noqa: N801  (used as a function: `with calm(): ...`)
    """Within the block (on this thread), small float32 products leave no BLAS worker running
    afterwards (see the module doc); `active=False` changes nothing. A class rather than a
    generator-based context manager: every search enters one (3 us less)."""

    def __init__(self, active: bool = True) -> None:
        self.active = active

    def __enter__(self) -> None:
        self.before = getattr(_scope, "calm", False)
        _scope.calm = self.before or self.active

    def __exit__(self, *exc_info: object) -> None:
        _scope.calm = self.before


@dataclass(frozen=True)
class KernelPlan:
    """How one matrix is scored: small matrices keep a copy, an int8 one (`int8`, quantized.py) where
    the compiled int8 kernel runs, else a float32 one for BLAS (`copy_fp32`)."""

    copy_fp32: bool
    cpu: str
    int8: bool = False

    @property
    def small(self) -> bool:
        """Whether the matrix keeps a copy of its own (BlockMatrix then gathers its blocks)."""
        return self.copy_fp32 or self.int8


def plan_kernel(rows: int, dim: int, *, flags: frozenset[str] | None = None) -> KernelPlan:
    """The kernel plan for a rows x dim matrix on this CPU (`flags` default: cpu.cpu_flags())."""
    kind = cpu_class(flags)
    if rows * dim <= INT8_COPY_BYTES and native.dot8_runs(kind, dim):
        return KernelPlan(copy_fp32=False, cpu=kind, int8=True)
    limit = FP32_COPY_BYTES["native" if native.level(kind, dim) else kind]
    return KernelPlan(copy_fp32=rows * dim * 4 <= limit, cpu=kind)


class Kernel:
    """Fast scores of one matrix (numpy, float16 or float32) for a unit query, with an error bound.

    `plan` decides which copy is kept (int8, float32 or none); `busy` (default: machine_busy) is asked
    per query. A float32 matrix is its own float32 "copy"; it gets a float16 twin only when small (for
    busy machines and batches), so a large float32 store is never copied.
    """

    def __init__(self, matrix: np.ndarray, plan: KernelPlan, *,
                 busy: Callable[[], bool] | None = None) -> None:
        wide = matrix.dtype == np.float32
        self.copy = None  # float32 rows for BLAS: an aligned copy when small, a float32 store as it is
        if plan.copy_fp32:
            self.copy = aligned_float32(matrix)
        elif wide:
            self.copy = np.ascontiguousarray(matrix)
        self.small = plan.copy_fp32  # a calm scope puts its products on one BLAS thread
        self.int8 = Int8Rows(matrix) if plan.int8 else None
        self.half, self.half_rows = None, np.zeros((0, 0), dtype=np.float16)
        if len(matrix) and (plan.small or not wide):
            self.half_rows = np.ascontiguousarray(matrix, dtype=np.float16)
            self.half = tensor(self.half_rows)
        self.native = native.level(plan.cpu, matrix.shape[1]) if self.half is not None else 0
        # the 16-bit kernel rounds float32 stores to float16: at most 2**-11 for unit vectors
        self.matrix_eps = 0.0 if matrix.dtype == np.float16 else 2.0**-11
        self.busy = busy
        self.last = ""  # name of the kernel that ran last, for benchmarks and tests

    def scores(self, query: np.ndarray) -> tuple[torch.Tensor, float]:
        """float32 scores of every row for the unit float32 `query`, and a bound on their error."""
        if self.half is None and (self.copy is None or len(self.copy) == 0):
            return torch.zeros(0), 0.0
        if self.int8 is not None:
            busy = (self.busy or machine_busy)()
            self.last = "int8, one thread" if busy else "int8"
            threads = 1 if busy else torch.get_num_threads()
            scores, eps = self.int8.scores(query, threads=threads, fp32_eps=FP32_EPS)
            return torch.from_numpy(scores), eps
        busy = self.half is not None and self.half.numel() * 2 <= ONE_THREAD_BYTES and (
            self.busy or machine_busy)()
        if self.copy is not None and (not busy or self.half is None):
            vector = np.asarray(query, dtype=np.float32)
            return torch.from_numpy(self._blas(lambda copy: copy @ vector)), FP32_EPS
        assert self.half is not None
        if self.native:
            self.last = "fp16 native, one thread" if busy else "fp16 native"
            threads = 1 if busy else torch.get_num_threads()
            scores = native.dot16(self.half_rows, query, level=self.native, threads=threads)
            return torch.from_numpy(scores), FP32_EPS + self.matrix_eps
        query16 = query.astype(np.float16)
        eps = FP16_EPS + self.matrix_eps + float(np.linalg.norm(query - query16.astype(np.float32)))
        self.last = "fp16, one thread" if busy else "fp16"
        return score(self.half, torch.from_numpy(query16), one=busy), eps

    def batch_scores(self, queries: np.ndarray) -> tuple[torch.Tensor, float]:
        """float32 scores (B, rows) for several unit queries, and a bound on their error."""
        eps = FP32_EPS + queries.shape[1] * 2.0**-23 + self.matrix_eps
        if self.copy is not None:
            return torch.from_numpy(self._blas(lambda copy: queries.astype(np.float32) @ copy.T)), eps
        if self.half is None:
            return torch.zeros((len(queries), 0)), eps
        return score_batch(self.half, torch.from_numpy(queries.astype(np.float32))), eps

    def _blas(self, product: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """`product(float32 matrix)` on BLAS's threads, or on one inside a calm scope (small matrices)."""
        assert self.copy is not None
        if self.small and getattr(_scope, "calm", False):
            self.last = "fp32, one thread"
            with blas_threads(1):
                return product(self.copy)
        self.last = "fp32"
        return product(self.copy)


def aligned_float32(matrix: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy of `matrix` that starts on a 64-byte boundary (a cache line), so
    that AVX512 loads of its rows never straddle two lines. numpy's large arrays start 16 bytes into
    a page; at 10k x 512 BLAS took 0.147-0.154 ms on those against 0.133-0.140 ms aligned."""
    out = native.aligned_empty(matrix.size, np.float32).reshape(matrix.shape)
    out[...] = matrix
    return out


def score(matrix: torch.Tensor, vector: torch.Tensor, *, one: bool = False) -> torch.Tensor:
    """matrix @ vector in the matrix's 16-bit type (float32 accumulation); `one`: on one thread."""
    if not one:
        return torch.mv(matrix, vector)
    with one_thread():
        return torch.mv(matrix, vector)


def score_batch(matrix: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Scores (B, N) in float32: blocks of the 16-bit matrix widened to float32, one GEMM each, on one
    thread (hundreds of short multi-threaded products in a row stall whenever another process holds a
    core: 4-6x slower than one thread on a busy 2-core machine)."""
    out = torch.empty((len(queries), len(matrix)), dtype=torch.float32)
    with one_thread():
        for first in range(0, len(matrix), _BATCH_ROWS):
            block = matrix[first:first + _BATCH_ROWS].float()
            out[:, first:first + _BATCH_ROWS] = queries @ block.T
    return out


def tensor(array: np.ndarray) -> torch.Tensor:
    """torch.from_numpy without the warning about read-only (memory-mapped) arrays: nothing writes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
