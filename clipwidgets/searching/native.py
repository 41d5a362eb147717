"""The compiled kernels of exact search: float16 scores (_dot16.c), int8 scores (_dot8.c) and top-n
selection (_top.c).

`pip install` builds them as optional extensions: without a C compiler the install goes on without
them, the 16-bit scores come from torch.mv (about half the speed, see kernels.py), small stores are
scored by BLAS on a float32 copy instead of an int8 one, and the top-n comes from torch.topk.
`level(cpu, dim)` is the float16 kernel's instruction set for `dim`-d rows on a CPU class of
kernels.py: 2 (AVX512F), 1 (AVX2, FMA, F16C) or 0 (not built, class "other", or a dimension it
cannot split into vectors); `dot8_runs(cpu, dim)` says whether the int8 kernel (AVX2) can run.

`dot16(matrix, vector, level=, threads=)` and `Int8Matrix.scores` score the rows on up to `threads`
threads (threads.in_parallel; ctypes releases the GIL during each call) that claim runs of rows from
one shared counter (claim.h): a thread that wakes late takes fewer. `top(scores, n)` is the n largest
of float32 scores and their positions, largest first (portable C: every CPU, where built).
"""

from __future__ import annotations

import ctypes
import functools
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from .threads import in_parallel

__all__ = ["Int8Matrix", "aligned_empty", "dot8_runs", "dot16", "exact16", "level", "quantize8", "ranges",
           "top", "top_built"]

# less than this per thread: a hand-off costs more than it saves (a pool thread takes 17-35 us to wake
# here; 10k x 512 int8 rows: 135 us median on one thread, 156 on two; float16: 200 against 140)
_MIN_BYTES_PER_THREAD = 4 << 20
_CHUNK_ROWS = 256  # smallest run of rows a thread claims at a time
_P, _N, _INT = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int  # pointer, size, int
_SIGNATURES: dict[str, tuple[str, tuple[Any, ...], Any]] = {  # C function: (extension, arguments, result)
    "clipwidgets_dot16": ("_dot16", (_P, _N, _N, _P, _P, _INT, ctypes.POINTER(_N), _N), _INT),
    "clipwidgets_exact16": ("_dot16", (_P, _N, _P, _N, _P, _P, _INT), _INT),
    "clipwidgets_dot8": ("_dot8", (_P, _N, _N, _P, _P, ctypes.c_float, _P, ctypes.POINTER(_N), _N), _INT),
    "clipwidgets_query8": ("_dot8", (_P, _P, _N, _N, _P, _P), None),
    "clipwidgets_ranges": ("_dot8", (_P, _N, _N, _P), None),
    "clipwidgets_quantize8": ("_dot8", (_P, _N, _N, _P, _P, _P, _P), None),
    "clipwidgets_top": ("_top", (_P, _N, _N, _P, _P), None),
}


@functools.cache
def _c(name: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """C function `name` of its built extension (_SIGNATURES), or None where that was not built."""
    module, arguments, result = _SIGNATURES[name]
    try:
        function = getattr(ctypes.CDLL(importlib.import_module(f"{__package__}.{module}").__file__), name)
    except (ImportError, OSError, AttributeError, TypeError):  # not built, or built for another Python
        return None
    function.argtypes, function.restype = list(arguments), result
    return function


def _built(name: str) -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    function = _c(name)
    assert function is not None, f"{name} was not built: check level(), dot8_runs() or top_built() first"
    return function


def level(cpu: str, dim: int) -> int:
    """The float16 kernel's level for `dim`-d rows on CPU class `cpu`, or 0 where none runs."""
    if _c("clipwidgets_dot16") is None:
        return 0
    if cpu == "avx512" and dim % 16 == 0:
        return 2
    return 1 if cpu in ("avx512", "avx2") and dim % 8 == 0 else 0


def dot8_runs(cpu: str, dim: int) -> bool:
    """Whether the int8 kernel scores `dim`-d rows on CPU class `cpu` (both classes have AVX2)."""
    return _c("clipwidgets_dot8") is not None and cpu in ("avx512", "avx2") and dim % 16 == 0


def top_built() -> bool:
    """Whether top() can run (the _top extension was built)."""
    return _c("clipwidgets_top") is not None


def dot16(matrix: np.ndarray, vector: np.ndarray, *, level: int, threads: int) -> np.ndarray:
    """float32 `matrix @ vector` for a C-contiguous float16 `matrix` and a float32 `vector`, at a
    `level` from level() (> 0), on up to `threads` threads."""
    assert matrix.dtype == np.float16 and matrix.flags.c_contiguous
    rows, dim = matrix.shape
    query = aligned_empty(dim, np.float32)
    query[:] = vector
    out = np.empty(rows, dtype=np.float32)
    arguments = (matrix.ctypes.data, rows, dim, query.ctypes.data, out.ctypes.data, level)
    if _shared(rows, dim * 2, threads, functools.partial(_built("clipwidgets_dot16"), *arguments)) != {level}:
        raise RuntimeError(f"clipwidgets' float16 kernel declined {matrix.shape} at level {level}")
    return out


def exact16(matrix: np.ndarray, rows: np.ndarray, query: np.ndarray, *, level: int) -> np.ndarray:
    """float64 `matrix[rows] @ query` for a C-contiguous float16 `matrix`, int64 `rows` and a float64
    `query`, at a level from level() (> 0), on the calling thread."""
    assert matrix.dtype == np.float16 and matrix.flags.c_contiguous and level > 0
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    query = np.ascontiguousarray(query, dtype=np.float64)
    out = np.empty(len(rows))
    if _built("clipwidgets_exact16")(matrix.ctypes.data, matrix.shape[1], rows.ctypes.data, len(rows),
                                     query.ctypes.data, out.ctypes.data, level) != 1:
        raise RuntimeError(f"clipwidgets' float16 re-scoring declined level {level}")
    return out


class Int8Matrix:
    """The int8 kernel's view of an int8 matrix, its float32 row scales and dimension scales
    (quantized.py's scheme), where dot8_runs(). The arrays' addresses are looked up once: each lookup
    costs about 1 us, a tenth of what a small store's search spends outside the kernel."""

    def __init__(self, values: np.ndarray, row_scales: np.ndarray, dim_scales: np.ndarray) -> None:
        assert values.dtype == np.int8 and values.flags.c_contiguous and values.shape[0] == len(row_scales)
        assert row_scales.dtype == dim_scales.dtype == np.float32 and values.shape[1] == len(dim_scales)
        self.arrays = (values, row_scales, dim_scales)  # kept alive with their addresses
        self.rows, self.dim = values.shape
        self.values, self.row_scales, self.dim_scales = (array.ctypes.data for array in self.arrays)

    def query(self, query: np.ndarray, limit: int) -> tuple[np.ndarray, float, float, float]:
        """(int16 w, step t, |f|, |q|) of a C-contiguous float32 query q (see quantized.py)."""
        assert query.dtype == np.float32 and query.flags.c_contiguous and len(query) == self.dim
        out, result = aligned_empty(self.dim, np.int16), np.empty(3)
        _built("clipwidgets_query8")(query.ctypes.data, self.dim_scales, self.dim, limit, out.ctypes.data,
                                     result.ctypes.data)
        return out, float(result[0]), float(result[1]), float(result[2])

    def scores(self, query: np.ndarray, step: float, *, threads: int) -> np.ndarray:
        """float32 `(values @ query) * row_scales * step` for an int16 `query` from query(), on up to
        `threads` threads (the sums are exact in int32)."""
        assert query.dtype == np.int16 and len(query) == self.dim
        out = np.empty(self.rows, dtype=np.float32)
        kernel = functools.partial(_built("clipwidgets_dot8"), self.values, self.rows, self.dim,
                                   query.ctypes.data, self.row_scales, step, out.ctypes.data)
        if _shared(self.rows, self.dim, threads, kernel) != {1}:
            raise RuntimeError(f"clipwidgets' int8 kernel declined {self.rows} x {self.dim}")
        return out


def ranges(rows: np.ndarray, out: np.ndarray) -> None:
    """Raise `out[i]` (float32) to the largest |rows[:, i]| of C-contiguous float32 `rows`."""
    assert rows.dtype == out.dtype == np.float32 and rows.flags.c_contiguous
    _built("clipwidgets_ranges")(rows.ctypes.data, rows.shape[0], rows.shape[1], out.ctypes.data)


def quantize8(rows: np.ndarray, dim_scales: np.ndarray, values: np.ndarray, row_scales: np.ndarray,
              bounds: np.ndarray) -> None:
    """int8 `values` and float32 `row_scales` of C-contiguous float32 `rows` (quantized.py's scheme);
    `bounds` (2 float64) is raised to the largest squared residual norm and scaled value norm."""
    assert rows.dtype == dim_scales.dtype == row_scales.dtype == np.float32 and values.dtype == np.int8
    assert rows.flags.c_contiguous and values.flags.c_contiguous and values.shape == rows.shape
    _built("clipwidgets_quantize8")(rows.ctypes.data, rows.shape[0], rows.shape[1], dim_scales.ctypes.data,
                                    values.ctypes.data, row_scales.ctypes.data, bounds.ctypes.data)


def top(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The `n` (1 <= n <= len) largest of C-contiguous float32 `scores` (no NaN), largest first, and
    their positions (int64); of equal scores the lower position first. Needs top_built()."""
    assert scores.dtype == np.float32 and scores.flags.c_contiguous and 0 < n <= len(scores)
    values, positions = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.int64)
    _built("clipwidgets_top")(scores.ctypes.data, len(scores), n, values.ctypes.data, positions.ctypes.data)
    return values, positions


def aligned_empty(count: int, dtype: type[np.generic]) -> np.ndarray:
    """An empty 1-d array that starts on a 64-byte boundary (a cache line). The kernels read the query
    once per row: numpy's small arrays start 16 bytes into a line, and loads straddling two lines made
    a 10k x 512 scan 11-15% slower (int8: 119 against 107 us; float16: 147-154 against 131)."""
    size = np.dtype(dtype).itemsize
    buffer = np.empty(count + 64 // size, dtype=dtype)
    start = (-buffer.ctypes.data % 64) // size
    return buffer[start:start + count]


def _shared(rows: int, row_bytes: int, threads: int, call: Callable[[Any, int], int]) -> set[int]:
    """What `call(counter reference, chunk)` returned on each of up to `threads` threads, all claiming
    runs of `chunk` rows from one counter (claim.h); runs are small enough for 64 per thread."""
    runs = max(1, min(threads, rows * row_bytes // _MIN_BYTES_PER_THREAD))
    counter = _N(0)
    chunk = max(_CHUNK_ROWS, rows // (64 * runs))
    return set(in_parallel([functools.partial(call, ctypes.byref(counter), chunk)] * runs))
