"""The indexer's decoding worker processes: decode files in order, into shared memory, crash-proof.

`decode_in_order` yields (relpath, decoded) for each file, decoded by a pool of worker processes that
import Pillow and numpy only (never torch, never the caller's `__main__`). A file that kills or hangs
its worker is skipped alone (`CRASHED`, `HUNG`); workers pause between files while a CPU model runs
(`model_idle`), ignore Ctrl-C (the indexer handles it) and exit when the indexer is gone.
See docs/indexing.md.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import context as mp_context
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .images import FILE_NOT_FOUND, PERMISSION_DENIED, ModelInputSpec, load_model_inputs

__all__ = [
    "CRASHED", "DECODE_TIMEOUT_S", "HUNG", "SLOT_BYTES_MAX", "Decoded", "Loader", "SharedSlots",
    "decode_in_order", "decode_into_slots", "init_decode_worker", "is_transient", "worker_context",
]

logger = logging.getLogger(__name__)
DECODE_TIMEOUT_S = 120.0  # a chunk, then a file, still decoding after this long: its worker is killed
CRASHED = "crashed the image decoder (its worker process died)"
HUNG = "decoding took longer than {:.0f} s (the decoder was stopped)"  # .format(DECODE_TIMEOUT_S)
SLOT_BYTES_MAX = 256 << 20  # shared memory for images in flight, at most (and half of /dev/shm's free space)

Decoded = tuple[np.ndarray, tuple[int, int]] | str  # (pixels, (width, height)) or a reason
Loader = Callable[[Sequence[str], ModelInputSpec], list[Decoded]]


def is_transient(reason: str) -> bool:
    """True for failures that say nothing about the file's content (missing, unreadable, a decoder
    crash or hang): they are retried on the next run, not remembered as a bad file."""
    return reason in (FILE_NOT_FOUND, PERMISSION_DENIED, CRASHED) or reason.startswith(HUNG.split("{")[0])


def decode_in_order(images_dir: Path, relpaths: list[str], spec: ModelInputSpec, *, workers: int,
                    window: int, loader: Loader = load_model_inputs,
                    model_idle: Any = None) -> Generator[tuple[str, Decoded], None, None]:
    """(relpath, decoded) for each path, in order; at most `window` images are decoded ahead (fewer
    when there are fewer files, or to fit the shared memory). `workers` processes (0: this process).
    Workers start a file only while `model_idle` (an Event of `worker_context()`), if given, is set."""
    if workers == 0:
        for relpath in relpaths:
            yield relpath, loader([str(images_dir / relpath)], spec)[0]
        return
    window = max(1, min(window, len(relpaths)))
    with _DecodePool(workers, spec, loader, model_idle, window=window) as pool:
        yield from pool.decode(images_dir, relpaths)


class SharedSlots:
    """`count` uint8 images of `image_size` (height, width) x 3 in shared memory, created by the
    indexer (no `name`) and attached by its decoding workers (`name`): a worker writes each decoded
    model input into a slot, so only the slot's number goes through the pipe to the indexer."""

    def __init__(self, count: int, image_size: tuple[int, int], *, name: str | None = None) -> None:
        self.count = count
        self.image_size = image_size
        shape = (count, image_size[0], image_size[1], 3)
        self.memory = shared_memory.SharedMemory(name=name, create=name is None, size=int(np.prod(shape)))
        self.array: np.ndarray | None = np.ndarray(shape, dtype=np.uint8, buffer=self.memory.buf)

    @property
    def worker_args(self) -> tuple[str, int, tuple[int, int]]:
        """What `init_decode_worker` needs to attach these slots."""
        return self.memory.name, self.count, self.image_size

    def close(self, *, unlink: bool) -> None:
        """Drop this process's view; `unlink` (the creator) frees the memory once nobody uses it."""
        self.array = None
        self.memory.close()
        if unlink:
            self.memory.unlink()


def _slot_limit(image_size: tuple[int, int]) -> int:
    """How many images of `image_size` the slots may hold: SLOT_BYTES_MAX, and at most half of the
    free space of /dev/shm (64 MB in a default Docker container), where that can be measured."""
    limit = SLOT_BYTES_MAX
    with contextlib.suppress(OSError, AttributeError):  # no /dev/shm (macOS), or no statvfs (Windows)
        shm = os.statvfs("/dev/shm")
        limit = min(limit, shm.f_bavail * shm.f_frsize // 2)
    return limit // (image_size[0] * image_size[1] * 3)


# -- in the worker processes ---------------------------------------------------------------------

_model_idle: Any = None  # a decoding worker's copy of the indexer's "model idle" event, if any
_slots: SharedSlots | None = None  # a decoding worker's view of the indexer's SharedSlots, if any


def decode_into_slots(loader: Loader, paths: Sequence[str], spec: ModelInputSpec,
                      slots: Sequence[int]) -> list[Any]:
    """`loader` on each path in a decoding worker (waiting before each file while the model runs),
    with each model-sized array written into its slot (`slots[i]` for `paths[i]`) and replaced by
    the slot's number: (slot, (width, height))."""
    results: list[Any] = []
    for path in paths:
        if _model_idle is not None:
            _model_idle.wait()
        results.extend(loader([path], spec))
    if _slots is None or _slots.array is None:
        return results
    for i, (result, slot) in enumerate(zip(results, slots, strict=True)):
        if not isinstance(result, str) and result[0].shape == _slots.array.shape[1:]:
            _slots.array[slot] = result[0]
            results[i] = (slot, result[1])
    return results


def init_decode_worker(max_image_pixels: int | None, owner_pid: int, model_idle: Any = None,
                       slots: tuple[str, int, tuple[int, int]] | None = None) -> None:
    """Set up a decoding worker process: the parent's Pillow limit, Ctrl-C left to the parent, and
    an exit of its own when the owner (the indexing process) is gone, e.g. killed with SIGKILL.

    With `model_idle` (a multiprocessing Event), the worker starts a file only while it is set: an
    indexer whose CPU model uses every core clears it while the model runs (see indexing.py).
    `slots` (name, count, image_size) attaches the indexer's SharedSlots for `decode_into_slots`.
    """
    global _model_idle, _slots
    _model_idle = model_idle
    if slots is not None:
        name, count, image_size = slots
        _slots = SharedSlots(count, image_size, name=name)
    Image.MAX_IMAGE_PIXELS = max_image_pixels
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_gone, args=(owner_pid,), daemon=True).start()


def _exit_when_gone(pid: int, interval_s: float = 1.0) -> None:
    while True:
        time.sleep(interval_s)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # the pid now belongs to another user's process: ours is gone
            os._exit(0)


# -- starting workers without the caller's __main__ ----------------------------------------------

_MAIN_SWAP = threading.Lock()


class _MainStandIn(types.ModuleType):
    """`__main__` as multiprocessing sees it while a worker starts: no file and no module spec, so the
    worker does not import (re-run) the caller's script; any other attribute is the real module's."""

    def __init__(self, main: types.ModuleType | None) -> None:
        super().__init__("__main__")
        self._real_main = main

    def __getattr__(self, name: str) -> Any:
        if name == "__file__" or self._real_main is None:
            raise AttributeError(name)
        return getattr(self._real_main, name)


def _start_without_caller_main(start: Callable[[], None]) -> None:
    """Run a process's `start` with `__main__` swapped for a stand-in, so that a script without an
    `if __name__ == "__main__":` guard is not re-run in each worker (which then cannot start).
    Other threads see the stand-in, which forwards every attribute but `__file__`, for the
    milliseconds of the start; the workers need nothing from `__main__`."""
    with _MAIN_SWAP:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = _MainStandIn(main)
        try:
            start()
        finally:
            if main is None:
                del sys.modules["__main__"]
            else:
                sys.modules["__main__"] = main


class _SpawnWorker(mp_context.SpawnProcess):
    def start(self) -> None:
        _start_without_caller_main(super().start)


class _SpawnContext(mp_context.SpawnContext):
    Process = _SpawnWorker


if sys.platform != "win32":
    class _ForkServerWorker(mp_context.ForkServerProcess):
        def start(self) -> None:
            _start_without_caller_main(super().start)

    class _ForkServerContext(mp_context.ForkServerContext):
        Process = _ForkServerWorker


def worker_context() -> mp_context.BaseContext:
    """The multiprocessing context of the decoding workers.

    Workers never import torch; forkserver (spawn where it does not exist) keeps them from inheriting
    the parent's threads. The fork server imports this module once, so each worker starts without
    importing anything (measured: a pool's first result 114 -> 57 ms). Workers never import the
    caller's `__main__`, so scripts need no `if __name__ == "__main__":` guard.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return _SpawnContext()
    context = _ForkServerContext()
    context.set_forkserver_preload([__name__])
    return context


# -- the pool -------------------------------------------------------------------------------------

class _DecoderHung(BrokenProcessPool):
    """A decoding task gave no result for DECODE_TIMEOUT_S; its workers were killed."""


class _DecodePool:
    """Worker processes that decode chunks of files; survives a worker dying on a file.

    Chunk number n in flight owns the shared slots of ring position n % max_in_flight, so a chunk's
    slots are free again (their pixels copied out) before the chunk that reuses them is submitted.
    There are at most `window` slots (the caller bounds it by the files to decode), and no more than
    `_slot_limit` allows; where even one per worker does not fit, results go through the pipe.
    """

    def __init__(self, workers: int, spec: ModelInputSpec, loader: Loader, model_idle: Any, *,
                 window: int) -> None:
        self.workers = workers
        self.spec = spec
        self.loader = loader
        self.model_idle = model_idle
        use_slots = spec.supported  # otherwise the arrays are whole images of any size, sent through the pipe
        if use_slots:
            limit = _slot_limit(spec.image_size)
            use_slots = limit >= workers
            window = min(window, limit) if use_slots else window
        self.chunk_size = max(1, min(16, window // (2 * workers)))
        self.max_in_flight = max(1, window // self.chunk_size)
        self.slots = SharedSlots(self.max_in_flight * self.chunk_size, spec.image_size) if use_slots else None
        self.context = worker_context()
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        slots = None if self.slots is None else self.slots.worker_args
        return ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=init_decode_worker,
                                   initargs=(Image.MAX_IMAGE_PIXELS, os.getpid(), self.model_idle, slots))

    def __enter__(self) -> _DecodePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self.slots is not None:
            self.slots.close(unlink=True)

    def _submit(self, images_dir: Path, number: int, chunk: list[str]) -> Future:
        first = (number % self.max_in_flight) * self.chunk_size
        paths = [str(images_dir / path) for path in chunk]
        return self.executor.submit(decode_into_slots, self.loader, paths, self.spec,
                                    range(first, first + len(chunk)))

    def _received(self, results: list[Any]) -> list[Decoded]:
        """Worker results with each slot number replaced by a copy of the slot's pixels."""
        if self.slots is None or self.slots.array is None:
            return results
        array = self.slots.array
        return [(array[result[0]].copy(), result[1])
                if not isinstance(result, str) and isinstance(result[0], int) else result
                for result in results]

    def decode(self, images_dir: Path, relpaths: list[str]) -> Iterator[tuple[str, Decoded]]:
        """(relpath, decoded) for each of `relpaths`, in order."""
        size = self.chunk_size
        chunks = deque(enumerate(relpaths[i:i + size] for i in range(0, len(relpaths), size)))
        in_flight: deque[tuple[int, list[str], Future]] = deque()
        worked = False
        while chunks or in_flight:
            try:
                while chunks and len(in_flight) < self.max_in_flight:
                    number, chunk = chunks[0]  # leaves `chunks` only once submitted: a pool that
                    in_flight.append((number, chunk, self._submit(images_dir, number, chunk)))
                    chunks.popleft()  # broke before would otherwise lose this chunk
                results = self._received(self._result(in_flight[0][2]))
            except BrokenProcessPool:
                chunks.extendleft(reversed([(number, chunk) for number, chunk, _ in in_flight]))
                in_flight.clear()
                self._restart()
                if not worked and not self._workers_start():
                    yield from self._in_this_process(images_dir, [chunk for _, chunk in chunks])
                    return
                worked = True
                yield from self._one_by_one(images_dir, *chunks.popleft())
                continue
            worked = True
            yield from zip(in_flight.popleft()[1], results, strict=True)

    def _result(self, future: Future) -> list[Any]:
        """A task's results; after DECODE_TIMEOUT_S without them, the workers are killed and
        _DecoderHung (a BrokenProcessPool) raised, so that a chunk is retried file by file."""
        try:
            return future.result(timeout=DECODE_TIMEOUT_S)
        except FutureTimeout:
            self._kill_workers()
            raise _DecoderHung("a decoding worker hung") from None

    def _kill_workers(self) -> None:
        for process in list(getattr(self.executor, "_processes", {}).values()):  # no public API before 3.14
            process.kill()

    def _workers_start(self) -> bool:
        """True when a fresh worker can run an empty task (so a failure came from a file)."""
        try:
            self.executor.submit(self.loader, [], self.spec).result()
        except BrokenProcessPool:
            return False
        return True

    def _in_this_process(self, images_dir: Path, chunks: list[list[str]]) -> Iterator[tuple[str, Decoded]]:
        logger.warning("Image decoding worker processes could not start; decoding in this process instead.")
        for chunk in chunks:
            yield from zip(chunk, self.loader([str(images_dir / path) for path in chunk], self.spec),
                           strict=True)

    def _one_by_one(self, images_dir: Path, number: int, chunk: list[str]) -> Iterator[tuple[str, Decoded]]:
        """Decode a chunk that killed or hung a worker file by file, to skip only the file that does it."""
        for relpath in chunk:
            future = self._submit(images_dir, number, [relpath])
            try:
                yield relpath, self._received(self._result(future))[0]
            except _DecoderHung:
                self._restart()
                yield relpath, HUNG.format(DECODE_TIMEOUT_S)
            except BrokenProcessPool:
                self._restart()
                yield relpath, CRASHED

    def _restart(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = self._start()
