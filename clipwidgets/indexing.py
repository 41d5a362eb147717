"""Index a folder of images into an EmbeddingStore: scan -> diff -> decode (workers) -> encode -> commit.

Only new or changed files are encoded. Worker processes decode and resize while the model runs;
work is committed in batches on an adaptive cadence, so an interrupted run loses at most the work
since the last commit. A file that cannot be decoded is skipped, reported and remembered, never fatal.
See docs/indexing.md.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import openmp
from .committer import Committer
from .errors import InvalidInputError
from .images import (
    ModelInputSpec,
    SharedSlots,
    decode_into_slots,
    init_decode_worker,
    load_model_inputs,
    scan_images,
)
from .store import EmbeddingStore, StoreDiff

logger = logging.getLogger(__name__)
PREFETCH_BATCHES = 2  # batches decoded ahead of the model
DECODE_TIMEOUT_S = 120.0  # a chunk, then a file, still decoding after this long: its worker is killed
CRASHED = "crashed the image decoder (its worker process died)"
HUNG = "decoding took longer than {:.0f} s (the decoder was stopped)"  # .format(DECODE_TIMEOUT_S)
BAD_NAME = "file name is not valid UTF-8; rename the file"

Decoded = tuple[np.ndarray, tuple[int, int]] | str  # (pixels, (width, height)) or a reason
Loader = Callable[[Sequence[str], ModelInputSpec], list[Decoded]]


@dataclass
class IndexReport:
    """What one indexing run did. indexed + unchanged + skipped = image files found.

    `skipped` counts every file found that is not in the store: those that failed now and known bad
    files that did not change since they failed (they are not retried); `skipped_files` lists them.
    `removed` counts entries dropped by `prune`; `missing` counts entries whose files are gone but
    were kept (prune was off).
    """

    indexed: int = 0
    unchanged: int = 0
    skipped: int = 0
    removed: int = 0
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    missing: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary (every field but `missing`)."""
        summary = asdict(self)
        del summary["missing"]
        return summary


def default_workers(device: str) -> int:
    """Decoding processes: up to 4 beside a CPU model (they decode in the model's pauses, see
    `_model_turn`), all cores but one beside a GPU, whose speed decoding must keep up with."""
    if device.startswith("cpu"):
        return min(4, _usable_cores())
    return max(1, _usable_cores() - 1)


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def index_images(images_dir: str | os.PathLike[str], store: EmbeddingStore | str | os.PathLike[str],
                 encoder: Any, *, batch_size: int = 32, workers: int | None = None, prune: bool = False,
                 progress: bool = True, engine: str = "local", ray_address: str | None = None,
                 ray_options: Any = None) -> IndexReport:
    """Embed the new and changed images under `images_dir` into `store`; returns an IndexReport.

    `store` is an EmbeddingStore open for writing, or a path: then the store is created (recording
    the encoder's model) or opened after checking its model and image root. `workers` decoding
    processes (default `default_workers`; 0 decodes in this process). `prune` removes entries whose
    files are gone. On Ctrl-C the work fully encoded so far is committed, then KeyboardInterrupt is
    re-raised. `engine="ray"` decodes and encodes on a Ray cluster instead (`ray_address`, None: a
    local Ray instance; `ray_options`: a `distributed.RayOptions`); see docs/distributed.md.
    """
    started = time.perf_counter()
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InvalidInputError(f"Image folder {images_dir} does not exist or is not a folder; "
                                "give the folder that holds your images.")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}.")
    if workers is not None and workers < 0:
        raise InvalidInputError(f"workers must be 0 (decode in this process) or more, got {workers}.")
    if engine not in ("local", "ray"):
        raise InvalidInputError(f"Unknown engine {engine!r}: use 'local' or 'ray'.")
    owned = not isinstance(store, EmbeddingStore)
    if owned:
        store = EmbeddingStore.open_or_create(store, encoder.meta, images_dir)
    try:
        if not owned:
            _check_store(store, encoder, images_dir)
        if engine == "ray":
            from .distributed import index_with_ray

            report = index_with_ray(images_dir, store, encoder, address=ray_address, options=ray_options,
                                    batch_size=batch_size, prune=prune, progress=progress)
        else:
            report = _index(images_dir, store, encoder, batch_size=batch_size,
                            workers=default_workers(encoder.device) if workers is None else workers,
                            prune=prune, progress=progress)
    finally:
        if owned:
            store.close()
    report.seconds = round(time.perf_counter() - started, 3)
    report.images_per_second = round(report.indexed / report.seconds, 2) if report.seconds > 0 else 0.0
    return report


def _check_store(store: EmbeddingStore, encoder: Any, images_dir: Path) -> None:
    store.check_model(encoder.meta)
    if store.image_root.resolve() != images_dir.resolve():
        raise InvalidInputError(f"Store {store.path} indexes images under {store.image_root}, not "
                                f"{images_dir.resolve()}. Index that folder, or use a new store.")


@dataclass
class RunPlan:
    """What a run has to do, from scanning the folder and diffing it against the store."""

    found: dict[str, tuple[int, int]]  # relpath -> (size, mtime_ns) of every storable image file
    bad_names: list[str]  # files whose names cannot be stored
    diff: StoreDiff
    todo: list[str]  # new and changed files, sorted: what the run encodes
    report: IndexReport  # started: unchanged, removed and missing are filled in


def plan_run(images_dir: Path, store: EmbeddingStore, *, prune: bool) -> RunPlan:
    """Scan `images_dir`, diff it against `store` and, with `prune`, remove entries whose files are gone."""
    found = scan_images(images_dir)
    bad_names = [path for path in found if not _storable(path)]
    for path in bad_names:
        del found[path]
    diff = store.diff(found)
    report = IndexReport(unchanged=len(diff.unchanged))
    if prune and diff.removed:
        store.remove(diff.removed)
        report.removed = len(diff.removed)
    else:
        report.missing = len(diff.removed)
    return RunPlan(found, bad_names, diff, sorted(diff.new + diff.changed), report)


def finish_report(plan: RunPlan, store: EmbeddingStore, committer: Committer) -> IndexReport:
    """The run's report, once everything `committer` received is committed."""
    known_bad = {record.path: record.reason for record in store.skipped()}
    skipped = {path: known_bad[path] for path in plan.diff.skipped_unchanged}
    skipped.update({record.path: record.reason for record in committer.skipped})
    skipped.update({path: BAD_NAME for path in plan.bad_names})
    report = plan.report
    report.indexed = committer.images_committed
    report.skipped = len(skipped)
    report.skipped_files = [{"path": path, "reason": skipped[path]} for path in sorted(skipped)]
    return report


def _index(images_dir: Path, store: EmbeddingStore, encoder: Any, *, batch_size: int, workers: int,
           prune: bool, progress: bool) -> IndexReport:
    plan = plan_run(images_dir, store, prune=prune)
    committer = Committer(store, plan.found, batch_size)
    with _progress_bar(len(plan.todo), progress) as bar:
        try:
            _encode_all(images_dir, plan.todo, encoder, committer, bar, batch_size=batch_size,
                        workers=workers)
        finally:
            committer.commit()  # also on Ctrl-C or an error: keep everything fully encoded
    return finish_report(plan, store, committer)


def _storable(relpath: str) -> bool:
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name (surrogate escapes)
        return False
    return True


def _encode_all(images_dir: Path, todo: list[str], encoder: Any, committer: Committer, bar: Any, *,
                batch_size: int, workers: int) -> None:
    spec = ModelInputSpec.from_meta(encoder.meta["preprocess"])
    to_tensor = _Normaliser(encoder, spec)
    # Workers even for a few files (starting them costs ~0.1 s): a decoder that crashes or hangs
    # must take down a worker, never this process.
    workers = min(workers, len(todo))
    model_idle = None
    if workers and encoder.device.startswith("cpu") and torch.get_num_threads() >= _usable_cores():
        model_idle = _worker_context().Event()
        model_idle.set()
    decoded = _decode_in_order(images_dir, todo, spec, workers=workers, window=PREFETCH_BATCHES * batch_size,
                               model_idle=model_idle)
    with contextlib.closing(decoded):  # on Ctrl-C, stop the workers before committing
        _encode_batches(decoded, encoder, to_tensor, committer, bar, batch_size=batch_size,
                        model_idle=model_idle)


@contextlib.contextmanager
def _model_turn(model_idle: Any) -> Iterator[None]:
    """Pause the decoding workers (between files) while a CPU model that uses every core runs.

    A worker that takes a core from such a model stalls all of its threads, since each step of the
    model waits for its slowest thread: measured on 2 cores, overlapping cost about twice the
    decoding's own CPU time. Paused, the workers decode while the model waits for its next batch,
    and torch's OpenMP threads are put to sleep first: left spinning, one takes a core from them
    (measured: 3 ms less per batch of 32 at bf16, of a ~39 ms pause).
    """
    if model_idle is None:
        yield
        return
    model_idle.clear()
    try:
        yield
    finally:
        openmp.rest_threads()
        model_idle.set()


def _encode_batches(decoded: Iterator[tuple[str, Decoded]], encoder: Any, to_tensor: _Normaliser,
                    committer: Committer, bar: Any, *, batch_size: int, model_idle: Any = None) -> None:
    paths: list[str] = []
    pixels: list[np.ndarray] = []
    sizes: list[tuple[int, int]] = []

    def flush() -> None:
        with _model_turn(model_idle):
            embeddings = encoder.encode_pixels(to_tensor(pixels))
        committer.add_images(paths, embeddings, sizes)
        bar.update(len(paths))
        paths.clear()
        pixels.clear()
        sizes.clear()

    for relpath, result in decoded:
        if isinstance(result, str):
            committer.add_skipped(relpath, result)
            bar.update(1)
            bar.set_postfix(skipped=len(committer.skipped), refresh=False)
            continue
        paths.append(relpath)
        pixels.append(result[0])
        sizes.append(result[1])
        if len(paths) == batch_size:
            flush()
    if paths:
        flush()


class _Normaliser:
    """uint8 (H, W, 3) arrays from the workers -> the model's float batch, as ToTensor + Normalize.

    The same float32 operations in the same order (x / 255, - mean, / std), done in place on the
    whole batch on the model's device: on a GPU, the uint8 batch travels (4x smaller than floats)
    and the main process's CPU threads stay free of work that would compete with the decoders.
    """

    def __init__(self, encoder: Any, spec: ModelInputSpec) -> None:
        preprocess = encoder.meta["preprocess"]
        self.device = encoder.device
        self.mean = torch.tensor(preprocess["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.transform = None if spec.supported else encoder.preprocess

    def __call__(self, pixels: list[np.ndarray]) -> torch.Tensor:
        if self.transform is not None:  # a resize mode the workers do not reproduce: the model's own
            return torch.stack([self.transform(Image.fromarray(array)) for array in pixels])
        channels_last = torch.from_numpy(np.stack(pixels)).to(self.device).permute(0, 3, 1, 2)
        batch = torch.empty(channels_last.shape, dtype=torch.float32, device=self.device)
        batch.copy_(channels_last)
        return batch.div_(255).sub_(self.mean).div_(self.std)


def _decode_in_order(images_dir: Path, relpaths: list[str], spec: ModelInputSpec, *, workers: int,
                     window: int, loader: Loader = load_model_inputs,
                     model_idle: Any = None) -> Iterator[tuple[str, Decoded]]:
    """(relpath, decoded) for each path, in order; at most `window` images are decoded ahead.
    Workers start a file only while `model_idle` (an Event of `_worker_context()`), if given, is set."""
    if workers == 0:
        for relpath in relpaths:
            yield relpath, loader([str(images_dir / relpath)], spec)[0]
        return
    with _DecodePool(workers, spec, loader, model_idle, window=window) as pool:
        yield from pool.decode(images_dir, relpaths)


def _worker_context() -> Any:
    """Workers never import torch; forkserver (spawn where it does not exist) keeps them from
    inheriting the parent's threads. The fork server imports the decoding module once, so each worker
    starts without importing anything (measured: a pool's first result 114 -> 57 ms)."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["clipwidgets.images"])
    return context


class _DecoderHung(BrokenProcessPool):
    """A decoding task gave no result for DECODE_TIMEOUT_S; its workers were killed."""


class _DecodePool:
    """Worker processes that decode chunks of files; survives a worker dying on a file.

    Chunk number n in flight owns the shared slots of ring position n % max_in_flight, so a chunk's
    slots are free again (their pixels copied out) before the chunk that reuses them is submitted.
    """

    def __init__(self, workers: int, spec: ModelInputSpec, loader: Loader, model_idle: Any, *,
                 window: int) -> None:
        self.workers = workers
        self.spec = spec
        self.loader = loader
        self.model_idle = model_idle
        self.chunk_size = max(1, min(16, window // (2 * workers)))
        self.max_in_flight = max(1, window // self.chunk_size)
        self.slots = None
        if spec.supported:  # otherwise the arrays are whole images of any size, sent through the pipe
            self.slots = SharedSlots(self.max_in_flight * self.chunk_size, spec.image_size)
        self.context = _worker_context()
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
        return [(self.slots.array[result[0]].copy(), result[1])
                if not isinstance(result, str) and isinstance(result[0], int) else result
                for result in results]

    def decode(self, images_dir: Path, relpaths: list[str]) -> Iterator[tuple[str, Decoded]]:
        size = self.chunk_size
        chunks = deque(enumerate(relpaths[i:i + size] for i in range(0, len(relpaths), size)))
        in_flight: deque[tuple[int, list[str], Future]] = deque()
        worked = False
        while chunks or in_flight:
            try:
                while chunks and len(in_flight) < self.max_in_flight:
                    number, chunk = chunks.popleft()
                    in_flight.append((number, chunk, self._submit(images_dir, number, chunk)))
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
        logger.warning("Image decoding worker processes could not start (a script that calls index_images "
                       "needs an `if __name__ == '__main__':` guard); decoding in this process instead.")
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


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="indexing", disable=not enabled or total == 0,
                dynamic_ncols=True, smoothing=0.1)
