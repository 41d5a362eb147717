"""numpy's BLAS on fewer threads for the length of one call, restored afterwards.

OpenBLAS (numpy's BLAS in its wheels) keeps its worker threads spinning after a product (about
2**28 CPU cycles, 0.1 s) in case more work comes. After a 0.15 ms search those spinning threads
took one of the two cores from the next text-encoder call (torch, its own OpenMP threads): a text
query measured 40.8 ms back to back against 19-21 ms for the encoder alone plus the search. A product
run with one BLAS thread wakes no worker, so nothing spins afterwards.

`blas_threads(n)` sets OpenBLAS's thread count through the library's own `openblas_set_num_threads`
(found among the libraries this process has loaded; numpy's wheels prefix it `scipy_`) and puts the
previous count back when the block ends. The count is process-wide while the block runs, so nested
or concurrent blocks share one saved value: the last to leave restores it. Without OpenBLAS (numpy
on MKL or Accelerate) nothing changes. Setting and restoring costs about 2 us.
"""

from __future__ import annotations

import ctypes
import functools
import re
import threading
from collections.abc import Callable
from pathlib import Path

from ..openmp import loaded_libraries, thread_count_functions

__all__ = ["blas_thread_count", "blas_threads"]

_OPENBLAS = re.compile(r"/lib(scipy_)?openblas[-.\w]*\.so[.\d]*$")
# openblas_set_num_threads under the names OpenBLAS builds export it (64-bit-integer builds add a suffix)
_PREFIXES = ("scipy_openblas", "openblas")
_SUFFIXES = ("64_", "_64", "")
_lock = threading.Lock()
_active = 0  # blocks inside blas_threads
_saved = 0  # the count to restore when the last one leaves


class blas_threads:  # noqa: N801  (used as a function: `with blas_threads(1): ...`)
    """Run the block with OpenBLAS on at most `count` threads; the previous count comes back after.

    A class rather than a generator-based context manager: it runs on every small search (1 us less)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __enter__(self) -> None:
        global _active, _saved
        functions = _thread_functions()
        if functions is None:
            return
        get_threads, set_threads = functions
        with _lock:
            if _active == 0:
                _saved = get_threads()
            _active += 1
            set_threads(max(1, min(self.count, _saved)))

    def __exit__(self, *exc_info: object) -> None:
        global _active
        functions = _thread_functions()
        if functions is None:
            return
        with _lock:
            _active -= 1
            if _active == 0:
                functions[1](_saved)


def blas_thread_count() -> int | None:
    """OpenBLAS's thread count now, or None where numpy's BLAS is not OpenBLAS."""
    functions = _thread_functions()
    return None if functions is None else functions[0]()


@functools.cache
def _thread_functions() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """(get, set) thread-count functions of the OpenBLAS that numpy loaded, if any.

    A wheel's copy lies in numpy.libs beside the numpy package and is taken first: faiss's wheel
    loads another OpenBLAS, whose path sorts first, and scoping that one left numpy's threads
    spinning (a text query after faiss had loaded: 2.3x the encoder's time)."""
    import numpy

    own = Path(numpy.__file__).parent.parent / "numpy.libs"
    for path in loaded_libraries(_OPENBLAS, first_under=own):  # importing numpy loaded its BLAS
        try:
            library = ctypes.CDLL(path)  # already loaded: the same instance
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                functions = thread_count_functions(library, f"{prefix}_get_num_threads{suffix}",
                                                   f"{prefix}_set_num_threads{suffix}")
                if functions is not None:
                    return functions
    return None
