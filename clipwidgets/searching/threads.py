"""`in_parallel(calls)`: run a few GIL-releasing calls (the compiled kernel, torch ops) side by side.

The calling thread runs the first call and a small pool the others; the pool is made again in a
forked child, whose copy of the parent's pool has no threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["in_parallel"]

_T = TypeVar("_T")
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid that made it, pool)
_pool_lock = threading.Lock()


def in_parallel(calls: list[Callable[[], _T]]) -> list[_T]:
    """The results of `calls`, in order; all but the first run on pool threads meanwhile."""
    others = [_threads().submit(call) for call in calls[1:]]
    return [calls[0]()] + [future.result() for future in others] if calls else []


def _threads() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(max(1, (os.cpu_count() or 1) - 1),
                                                     thread_name_prefix="clipwidgets-search"))
        return _pool[1]
