"""Put torch's idle OpenMP threads to sleep at once, so that other processes get their cores.

When a parallel region ends, OpenMP runtimes keep their threads spinning for a while (libgomp:
300,000 spins, about 6 ms here; LLVM/Intel OpenMP: 200 ms) in case more work comes. Between two CPU
model batches the indexer's decoding workers need those cores, and a spinning thread takes one.
`omp_pause_resource_all` (OpenMP 5.0) releases the calling thread's pool now; the next parallel
region starts its threads again, which costs microseconds per batch.

`one_thread()` runs a block single-threaded by changing only the calling thread's OpenMP setting
(small search kernels use it: a short multi-threaded kernel stalls whenever another process holds a core).
"""

from __future__ import annotations

import ctypes
import functools
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["loaded_libraries", "one_thread", "rest_threads", "thread_count_functions"]

_OMP_PAUSE_SOFT = 1
_RUNTIME = re.compile(r"/lib(gomp|omp|iomp5)[-.\w]*\.so[.\d]*$")  # GNU, LLVM and Intel OpenMP


def rest_threads() -> bool:
    """Release this thread's idle OpenMP threads; False where no OpenMP runtime with
    `omp_pause_resource_all` is loaded (then nothing changes) or it declines (inside a parallel region)."""
    pause = _pause_function()
    return pause is not None and pause(_OMP_PAUSE_SOFT) == 0


@functools.cache
def _pause_function() -> Callable[[int], int] | None:
    """`omp_pause_resource_all` of the OpenMP runtime loaded in this process (Linux), if any."""
    for path in loaded_libraries(_RUNTIME):
        try:
            function = ctypes.CDLL(path).omp_pause_resource_all  # already loaded: the same instance
        except (OSError, AttributeError):
            continue
        function.argtypes = [ctypes.c_int]
        function.restype = ctypes.c_int
        return function
    return None


def loaded_libraries(pattern: re.Pattern[str], *, first_under: Path | None = None) -> list[str]:
    """Paths of the shared libraries this process has loaded whose path matches `pattern` (Linux:
    /proc/self/maps; elsewhere none), sorted, those inside the folder `first_under` first (a package's
    own copy, where another package loaded a second one)."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    fields = (line.split(maxsplit=5) for line in maps.splitlines())
    paths = sorted({parts[5] for parts in fields if len(parts) == 6 and pattern.search(parts[5])})
    if first_under is None:
        return paths
    folder = first_under.resolve()
    return sorted(paths, key=lambda path: not Path(path).resolve().is_relative_to(folder))


def thread_count_functions(library: ctypes.CDLL, get_name: str,
                           set_name: str) -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """`library`'s (get, set) thread-count functions of those names, typed, or None where it lacks them."""
    try:
        get_threads, set_threads = getattr(library, get_name), getattr(library, set_name)
    except AttributeError:
        return None
    get_threads.restype = ctypes.c_int
    set_threads.argtypes = [ctypes.c_int]
    set_threads.restype = None
    return get_threads, set_threads


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with the calling thread's OpenMP parallel regions on one thread.

    Only the calling thread's `nthreads` setting changes (OpenMP's `omp_set_num_threads` is
    per thread), and it is restored on exit: other threads, torch's global thread count
    (`torch.set_num_threads`) and BLAS pools are untouched. Without a loaded OpenMP runtime
    nothing changes.
    """
    functions = _thread_functions()
    if functions is None:
        yield
        return
    import torch

    get_threads, set_threads = functions
    torch.get_num_threads()  # torch sets each thread's OpenMP count on first use: let it happen first
    threads = get_threads()
    if threads == 1:
        yield
        return
    set_threads(1)
    try:
        yield
    finally:
        set_threads(threads)


@functools.cache
def _thread_functions() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """(`omp_get_max_threads`, `omp_set_num_threads`) of torch's OpenMP runtime, if one is loaded.

    Other libraries may load their own copy (faiss does): the one inside torch's folder comes first.
    """
    import torch

    for path in loaded_libraries(_RUNTIME, first_under=Path(torch.__file__).parent):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        functions = thread_count_functions(library, "omp_get_max_threads", "omp_set_num_threads")
        if functions is not None:
            return functions
    return None
