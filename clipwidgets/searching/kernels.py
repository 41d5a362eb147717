"""Fast scoring kernels: which one runs is chosen by the CPU's features and the matrix's size.

- "fp32, split": small matrices (their float32 copy fits the CPU's cache): BLAS on a float32 copy,
  the rows split between the calling thread and one helper thread, numpy's BLAS on one thread each
  (helper.py). numpy's own two-thread BLAS is as fast but leaves its worker spinning for 0.1 s after
  each product, which took a core from the next text-encoder call (blas.py).
- "fp16": torch.mv on the 16-bit matrix itself (float32 accumulation): it reads the matrix once, the
  memory-bandwidth floor, so it wins as soon as the matrix leaves the cache (1M x 512 on AVX512:
  ~30 ms against numpy float32's ~85 ms).
- "fp32": BLAS on all its threads, for a store that keeps large float32 vectors (scored in place).

A busy machine (load average at or above the number of CPUs) changes the choice per query: a short
two-thread kernel stalls whenever another process holds a core (median 20 ms against 0.6 ms at 10k
rows here), so small matrices are then scored by the 16-bit kernel on one thread ("fp16, one
thread"; on one CPU, "fp32, one thread" is the idle choice). One thread means the calling thread's
own OpenMP setting (clipwidgets.openmp.one_thread) or numpy's BLAS count for the call (blas.py):
no global thread count is left changed.

`CLIPWIDGETS_SEARCH_CPU` (clipwidgets.settings.ENV_SEARCH_CPU) = "avx2" or "other" makes the choice
as on that lesser CPU class (benchmarks emulating an AVX2-only CPU); a class above the CPU's own is
ignored.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import cpu
from ..errors import InvalidInputError
from ..openmp import one_thread
from ..settings import ENV_SEARCH_CPU
from .blas import blas_threads
from .helper import split_matvec

__all__ = ["CPU_CLASSES", "FP16_EPS", "FP32_COPY_BYTES", "FP32_EPS", "ONE_THREAD_BYTES", "Kernel",
           "KernelPlan", "cpu_class", "machine_busy", "plan_kernel", "score", "score_batch", "tensor"]

CPU_CLASSES = ("other", "avx2", "avx512")  # from least to most capable
# Largest float32 copy (bytes) scored by BLAS instead of the 16-bit kernel, by CPU class. AVX512:
# measured crossover between 10k and 100k rows at 512-d (the copy must stay in the L3 cache). AVX2:
# the 16-bit kernel is 2x slower than BLAS at 10k there (issue 18), so the copy pays for longer.
FP32_COPY_BYTES = {"avx512": 32 << 20, "avx2": 64 << 20, "other": 256 << 20}
# 16-bit matrices up to this size run on one thread when the machine is busy (see the module doc).
ONE_THREAD_BYTES = 32 << 20
# Error bound of the 16-bit kernel besides the query's own float16 rounding: the float16 result is
# rounded by at most 2**-12 for |score| < 1, float32 accumulation adds ~D * 2**-24; 1e-3 is generous.
FP16_EPS = 1e-3
FP32_EPS = 1e-4  # BLAS on float32: float32 rounding of products and sums only
_BATCH_ROWS = 2048  # rows widened to float32 at a time by the batch kernel
_CPUS = os.cpu_count() or 1


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


@dataclass(frozen=True)
class KernelPlan:
    """How one matrix is scored: `copy_fp32` keeps a float32 copy for BLAS (small matrices only)."""

    copy_fp32: bool
    cpu: str


def plan_kernel(rows: int, dim: int, *, flags: frozenset[str] | None = None) -> KernelPlan:
    """The kernel plan for a rows x dim matrix on this CPU (`flags` default: cpu.cpu_flags())."""
    kind = cpu_class(flags)
    return KernelPlan(copy_fp32=rows * dim * 4 <= FP32_COPY_BYTES[kind], cpu=kind)


class Kernel:
    """Fast scores of one matrix (numpy, float16 or float32) for a unit query, with an error bound.

    `plan` decides whether a float32 copy is kept; `busy` (default: machine_busy) is asked per query.
    A float32 matrix is its own "copy"; it gets a float16 twin only when small (for busy machines),
    so a large float32 store is never copied. `cpus` (default: the machine's) decides whether a
    small product is split over two threads.
    """

    def __init__(self, matrix: np.ndarray, plan: KernelPlan, *,
                 busy: Callable[[], bool] | None = None, cpus: int | None = None) -> None:
        wide = matrix.dtype == np.float32
        self.copy = np.ascontiguousarray(matrix, dtype=np.float32) if plan.copy_fp32 or wide else None
        self.small = plan.copy_fp32  # the float32 product stays in the cache: split, never all threads
        self.half = None
        if len(matrix) and (plan.copy_fp32 or not wide):
            self.half = tensor(np.ascontiguousarray(matrix, dtype=np.float16))
        # the 16-bit kernel rounds float32 stores to float16: at most 2**-11 for unit vectors
        self.matrix_eps = 0.0 if matrix.dtype == np.float16 else 2.0**-11
        self.busy = busy
        self.cpus = _CPUS if cpus is None else cpus
        self.last = ""  # name of the kernel that ran last, for benchmarks and tests

    def scores(self, query: np.ndarray) -> tuple[torch.Tensor, float]:
        """float32 scores of every row for the unit float32 `query`, and a bound on their error."""
        if self.half is None and (self.copy is None or len(self.copy) == 0):
            return torch.zeros(0), 0.0
        busy = self.half is not None and self.half.numel() * 2 <= ONE_THREAD_BYTES and (
            self.busy or machine_busy)()
        if self.copy is not None and (not busy or self.half is None):
            return torch.from_numpy(self._fp32(query.astype(np.float32))), FP32_EPS
        query16 = query.astype(np.float16)
        eps = FP16_EPS + self.matrix_eps + float(np.linalg.norm(query - query16.astype(np.float32)))
        self.last = "fp16, one thread" if busy else "fp16"
        assert self.half is not None
        return score(self.half, torch.from_numpy(query16), one=busy), eps

    def _fp32(self, query: np.ndarray) -> np.ndarray:
        assert self.copy is not None
        if not self.small:
            self.last = "fp32"
            return self.copy @ query
        if self.cpus < 2:
            self.last = "fp32, one thread"
            with blas_threads(1):
                return self.copy @ query
        self.last = "fp32, split"
        return split_matvec(self.copy, query)

    def batch_scores(self, queries: np.ndarray) -> tuple[torch.Tensor, float]:
        """float32 scores (B, rows) for several unit queries, and a bound on their error."""
        eps = FP32_EPS + queries.shape[1] * 2.0**-23 + self.matrix_eps
        if self.copy is not None:
            return torch.from_numpy(queries.astype(np.float32) @ self.copy.T), eps
        if self.half is None:
            return torch.zeros((len(queries), 0)), eps
        return score_batch(self.half, torch.from_numpy(queries.astype(np.float32))), eps


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
