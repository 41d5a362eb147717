"""Put torch's idle OpenMP threads to sleep at once, so that other processes get their cores.

When a parallel region ends, OpenMP runtimes keep their threads spinning for a while (libgomp:
300,000 spins, about 6 ms here; LLVM/Intel OpenMP: 200 ms) in case more work comes. Between two CPU
model batches the indexer's decoding workers need those cores, and a spinning thread takes one.
`omp_pause_resource_all` (OpenMP 5.0) releases the calling thread's pool now; the next parallel
region starts its threads again, which costs microseconds per batch.
"""

from __future__ import annotations

import ctypes
import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["rest_threads"]

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
    for path in _loaded_runtimes():
        try:
            function = ctypes.CDLL(path).omp_pause_resource_all  # already loaded: the same instance
        except (OSError, AttributeError):
            continue
        function.argtypes = [ctypes.c_int]
        function.restype = ctypes.c_int
        return function
    return None


def _loaded_runtimes() -> list[str]:
    if not sys.platform.startswith("linux"):
        return []
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    fields = (line.split(maxsplit=5) for line in maps.splitlines())
    return sorted({parts[5] for parts in fields if len(parts) == 6 and _RUNTIME.search(parts[5])})
