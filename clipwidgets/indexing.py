"""Index a folder of images into an EmbeddingStore: scan -> diff -> decode (workers) -> encode -> commit.

Only new or changed files are encoded. Worker processes (decode_workers.py) decode and resize while
the model runs; work is committed every few seconds (committer.py), so an interrupted run loses at
most the work since the last commit. A file that cannot be decoded is skipped and reported, never
fatal; it is remembered unless the failure was transient (missing, unreadable, a decoder crash or
hang), so that it is retried on the next run. See docs/indexing.md.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from . import openmp
from .committer import Committer
from .decode_workers import Decoded, decode_in_order, is_transient, worker_context
from .errors import InvalidInputError
from .images import ModelInputSpec, scan_images
from .malloc import reuse_freed_memory
from .store import EmbeddingStore, StoreDiff
from .types import PathLike, PixelEncoder

if TYPE_CHECKING:
    from .distributed import RayOptions

__all__ = ["BAD_NAME", "MAX_BATCH_SIZE", "PREFETCH_BATCHES", "IndexReport", "Normaliser", "RunPlan",
           "default_workers", "finish_report", "index_images", "plan_run"]

PREFETCH_BATCHES = 2  # batches decoded ahead of the model
MAX_BATCH_SIZE = 4096  # images per model call, at most: a batch is held in memory (~0.6 MB per 224-px image)
BAD_NAME = "file name is not valid UTF-8; rename the file"


@dataclass
class IndexReport:
    """What one indexing run did. indexed + unchanged + skipped = image files found.

    `skipped` counts every file found that is not in the store: those that failed now (transient
    failures included: they are retried on the next run) and known bad files that did not change since
    they failed (they are not retried); `skipped_files` lists them with their reasons.
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


def index_images(images_dir: PathLike, store: EmbeddingStore | PathLike, encoder: PixelEncoder, *,
                 batch_size: int = 32, workers: int | None = None, prune: bool = False,
                 progress: bool = True, engine: str = "local", ray_address: str | None = None,
                 ray_options: RayOptions | None = None) -> IndexReport:
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
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidInputError(f"batch_size must be between 1 and {MAX_BATCH_SIZE:,} images per model call, "
                                f"got {batch_size:,}: a batch is held in memory (about 0.6 MB per image at "
                                "224 px). Use 32 (the default) on a CPU, 128-512 on a GPU.")
    if workers is not None and workers < 0:
        raise InvalidInputError(f"workers must be 0 (decode in this process) or more, got {workers}.")
    if engine not in ("local", "ray"):
        raise InvalidInputError(f"Unknown engine {engine!r}: use 'local' or 'ray'.")
    owned = not isinstance(store, EmbeddingStore)
    opened = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open_or_create(
        store, encoder.meta, images_dir)
    try:
        if not owned:
            _check_store(opened, encoder, images_dir)
        if engine == "ray":
            from .distributed import index_with_ray

            report = index_with_ray(images_dir, opened, encoder, address=ray_address, options=ray_options,
                                    batch_size=batch_size, prune=prune, progress=progress)
        else:
            report = _index(images_dir, opened, encoder, batch_size=batch_size,
                            workers=default_workers(encoder.device) if workers is None else workers,
                            prune=prune, progress=progress)
    finally:
        if owned:
            opened.close()
    report.seconds = round(time.perf_counter() - started, 3)
    report.images_per_second = round(report.indexed / report.seconds, 2) if report.seconds > 0 else 0.0
    return report


def _check_store(store: EmbeddingStore, encoder: PixelEncoder, images_dir: Path) -> None:
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
    """Scan `images_dir`, diff it against `store` and, with `prune`, remove entries whose files are gone.

    `todo` also holds unchanged files that the store remembers with a transient failure (recorded by
    an older version): they are retried."""
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
    known_bad = {record.path: record.reason for record in store.skipped()}
    retry = [path for path in diff.skipped_unchanged if is_transient(known_bad[path])]
    return RunPlan(found, bad_names, diff, sorted(diff.new + diff.changed + retry), report)


def finish_report(plan: RunPlan, store: EmbeddingStore, committer: Committer) -> IndexReport:
    """The run's report, once everything `committer` received is committed."""
    known_bad = {record.path: record.reason for record in store.skipped()}
    retried = set(plan.todo)
    skipped = {path: known_bad[path] for path in plan.diff.skipped_unchanged if path not in retried}
    skipped.update({record.path: record.reason for record in committer.skipped})
    skipped.update({path: BAD_NAME for path in plan.bad_names})
    report = plan.report
    report.indexed = committer.images_committed
    report.skipped = len(skipped)
    report.skipped_files = [{"path": path, "reason": skipped[path]} for path in sorted(skipped)]
    return report


def _index(images_dir: Path, store: EmbeddingStore, encoder: PixelEncoder, *, batch_size: int, workers: int,
           prune: bool, progress: bool) -> IndexReport:
    plan = plan_run(images_dir, store, prune=prune)
    committer = Committer(store, plan.found, batch_size)
    cpu_model = encoder.device.startswith("cpu") and bool(plan.todo)
    with _progress_bar(len(plan.todo), progress) as bar, \
            reuse_freed_memory() if cpu_model else contextlib.nullcontext():
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


def _encode_all(images_dir: Path, todo: list[str], encoder: PixelEncoder, committer: Committer, bar: Any, *,
                batch_size: int, workers: int) -> None:
    spec = ModelInputSpec.from_meta(encoder.meta["preprocess"])
    to_tensor = Normaliser(encoder, spec)
    # Workers even for a few files (starting them costs ~0.1 s): a decoder that crashes or hangs
    # must take down a worker, never this process.
    workers = min(workers, len(todo))
    model_idle = None
    if workers and encoder.device.startswith("cpu") and torch.get_num_threads() >= _usable_cores():
        model_idle = worker_context().Event()
        model_idle.set()
    decoded = decode_in_order(images_dir, todo, spec, workers=workers, window=PREFETCH_BATCHES * batch_size,
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


def _encode_batches(decoded: Iterator[tuple[str, Decoded]], encoder: PixelEncoder, to_tensor: Normaliser,
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


class Normaliser:
    """uint8 (H, W, 3) arrays from the workers -> the model's float batch, as ToTensor + Normalize.

    The same float32 operations in the same order (x / 255, - mean, / std), done in place on the
    whole batch on the model's device: on a GPU, the uint8 batch travels (4x smaller than floats)
    and the main process's CPU threads stay free of work that would compete with the decoders.
    """

    def __init__(self, encoder: PixelEncoder, spec: ModelInputSpec) -> None:
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


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="indexing", disable=not enabled or total == 0,
                dynamic_ncols=True, smoothing=0.1)
