"""A second thread for small products: half the rows each, numpy's BLAS on one thread each.

numpy's OpenBLAS on two threads leaves its worker spinning for about 0.1 s after each product (see
blas.py), which slowed the next text-encoder call on 2 cores from ~20 to ~40 ms. One BLAS thread
leaves nothing spinning but takes twice as long on a matrix that sits in the cache. So the rows are
split: the calling thread multiplies the first half while one helper thread, blocked on a queue
between products (no spinning), multiplies the second. numpy releases the GIL inside BLAS, so both
halves run at once.

The helper is a daemon thread started on first use (and again after a fork, which keeps only the
calling thread); products from several threads take turns.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import numpy as np

from .blas import blas_threads

__all__ = ["split_matvec"]


class _Helper:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[np.ndarray, np.ndarray, np.ndarray]] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self.pid = os.getpid()
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, name="clipwidgets-search-helper", daemon=True).start()

    def _serve(self) -> None:
        while True:
            matrix, vector, out = self.jobs.get()
            try:
                np.matmul(matrix, vector, out=out)
                self.done.put(None)
            except BaseException as error:  # handed to the caller, which raises it
                self.done.put(error)


_helper: _Helper | None = None
_start_lock = threading.Lock()


def _get_helper() -> _Helper:
    global _helper
    with _start_lock:
        if _helper is None or _helper.pid != os.getpid():
            _helper = _Helper()
        return _helper


def split_matvec(matrix: np.ndarray, vector: np.ndarray) -> Any:
    """float32 `matrix @ vector` (C-contiguous float32 operands) on the calling thread and the helper,
    each on one BLAS thread."""
    out = np.empty(len(matrix), dtype=np.float32)
    half = len(matrix) // 2
    helper = _get_helper()
    with helper.lock, blas_threads(1):
        helper.jobs.put((matrix[half:], vector, out[half:]))
        try:
            np.matmul(matrix[:half], vector, out=out[:half])
        finally:
            error = helper.done.get()  # always collected, so the next product gets its own answer
    if error is not None:
        raise error
    return out
