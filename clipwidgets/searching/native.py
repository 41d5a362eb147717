"""The compiled kernels of exact search: float16 scores (_dot16.c) and top-n selection (_top.c).

`pip install` builds them as optional extensions: without a C compiler the install goes on without
them, the 16-bit scores come from torch.mv (about half the speed, see kernels.py) and the top-n from
torch.topk. `level(cpu, dim)` is the float16 kernel's instruction set for `dim`-d rows on a CPU class
of kernels.py: 2 (AVX512F), 1 (AVX2, FMA, F16C) or 0 (not built, class "other", or a dimension it
cannot split into vectors).

`dot16(matrix, query, level=, threads=)` splits the rows into `threads` runs scored side by side
(threads.in_parallel; ctypes releases the GIL during each call). `top(scores, n)` is the n largest
of float32 scores and their positions, largest first (portable C: every CPU, where it was built).
"""

from __future__ import annotations

import ctypes
import functools
import importlib

import numpy as np

from .threads import in_parallel

__all__ = ["dot16", "level", "top", "top_built"]

_MIN_ROWS_PER_THREAD = 4096  # fewer rows than this per thread: a hand-off costs more than it saves


def _function(module: str, name: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """Function `name` of this package's built extension `module`, or None where it was not built."""
    try:
        library = ctypes.CDLL(importlib.import_module(f"{__package__}.{module}").__file__)
        return getattr(library, name)
    except (ImportError, OSError, AttributeError, TypeError):  # not built, or built for another Python
        return None


@functools.cache
def _kernel() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """clipwidgets_dot16 of the built extension, or None where it was not built."""
    function = _function("_dot16", "clipwidgets_dot16")
    if function is not None:
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_int]
        function.restype = ctypes.c_int
    return function


@functools.cache
def _selector() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """clipwidgets_top of the built extension, or None where it was not built."""
    function = _function("_top", "clipwidgets_top")
    if function is not None:
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p,
                             ctypes.c_void_p]
        function.restype = None
    return function


def top_built() -> bool:
    """Whether top() can run (the _top extension was built)."""
    return _selector() is not None


def level(cpu: str, dim: int) -> int:
    """The kernel level that scores `dim`-d rows on CPU class `cpu`, or 0 where none does."""
    if _kernel() is None:
        return 0
    if cpu == "avx512" and dim % 16 == 0:
        return 2
    return 1 if cpu in ("avx512", "avx2") and dim % 8 == 0 else 0


def dot16(matrix: np.ndarray, query: np.ndarray, *, level: int, threads: int) -> np.ndarray:
    """float32 `matrix @ query` for a C-contiguous float16 `matrix` and a float32 `query`, at a `level`
    from level() (> 0), on up to `threads` threads."""
    kernel = _kernel()
    assert kernel is not None and matrix.dtype == np.float16 and matrix.flags.c_contiguous
    rows, dim = matrix.shape
    query = np.ascontiguousarray(query, dtype=np.float32)
    out = np.empty(rows, dtype=np.float32)
    base, step = matrix.ctypes.data, dim * 2
    runs = max(1, min(threads, rows // _MIN_ROWS_PER_THREAD))
    bounds = [rows * i // runs for i in range(runs + 1)]

    def run(first: int, stop: int) -> int:
        return int(kernel(base + first * step, stop - first, dim, query.ctypes.data,
                          out.ctypes.data + first * 4, level))

    ran = in_parallel([functools.partial(run, bounds[i], bounds[i + 1]) for i in range(runs)])
    if ran != [level] * runs:
        raise RuntimeError(f"clipwidgets' float16 kernel declined {matrix.shape} at level {level}")
    return out



def top(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The `n` (1 <= n <= len) largest of C-contiguous float32 `scores` (no NaN), largest first, and
    their positions (int64); of equal scores the lower position first. Needs top_built()."""
    select = _selector()
    assert select is not None and scores.dtype == np.float32 and scores.flags.c_contiguous
    assert 0 < n <= len(scores)
    values, positions = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.int64)
    select(scores.ctypes.data, len(scores), n, values.ctypes.data, positions.ctypes.data)
    return values, positions
