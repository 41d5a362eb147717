"""Index on a Ray cluster with Ray Data: decoding on CPU tasks, encoding on an actor pool.

The driver scans and diffs like the local indexer (`indexing.plan_run`), streams the files still to
do through two Ray Data stages, and commits the (path, embedding or skip reason) rows it receives
through a `Committer`, as they arrive: it is the only writer, so a killed driver loses at most the
work since its last commit. Decoding tasks run `images.load_model_inputs`, the local indexer's safe
decoder, so skip reasons are the same. Each encoding actor rebuilds the encoder once from its
recipe (model name, weights, precision). See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import ray_reaper
from .committer import Committer
from .errors import ClipWidgetsError, InvalidInputError
from .images import ModelInputSpec, load_model_inputs
from .indexing import IndexReport, Normaliser, finish_report, plan_run
from .store import EmbeddingStore

__all__ = ["DECODE_RETRIES", "LOCAL_OBJECT_STORE_BYTES", "LOCAL_START_ATTEMPTS", "EncoderRecipe",
           "RayIndexingError", "RayOptions", "index_with_ray"]

logger = logging.getLogger(__name__)
DECODE_RETRIES = 3  # a decoding task whose worker dies is retried this many times, then the run stops
LOCAL_OBJECT_STORE_BYTES = 2 << 30  # object store of a local Ray instance (decoded images in flight)
LOCAL_START_ATTEMPTS = 3
_CHECKPOINT_LABEL = "checkpoint:"
_HAS_PROC = os.path.isdir("/proc/self")  # the reaper reads /proc (Linux)


class RayIndexingError(ClipWidgetsError):
    """The Ray run could not finish (a task kept dying, the cluster went away); what arrived is kept."""


@dataclass(frozen=True)
class EncoderRecipe:
    """What an actor needs to build the encoder itself: never the model, which is not pickled."""

    name: str
    pretrained: str | None
    precision: str

    @classmethod
    def of(cls, encoder: Any, *, checkpoint: str | os.PathLike[str] | None = None,
           precision: str | None = None) -> EncoderRecipe:
        """The recipe of a loaded encoder. A model loaded from a checkpoint file needs its path,
        `checkpoint`, reachable from every node (the store only records the file's name and size)."""
        name, label = encoder.meta["name"], str(encoder.meta["pretrained"])
        precision = precision or encoder.precision
        if name == "tiny":
            return cls(name, None, precision)
        if not label.startswith(_CHECKPOINT_LABEL):
            if checkpoint is not None:
                raise InvalidInputError(f"The encoder has pretrained weights {label!r}, not a checkpoint "
                                        f"file; leave out checkpoint={str(checkpoint)!r}.")
            return cls(name, label, precision)
        if checkpoint is None:
            raise InvalidInputError(f"The encoder's weights come from a checkpoint file ({label}); the "
                                    "Ray actors load it themselves: pass its path (RayOptions(checkpoint="
                                    "...), or --pretrained PATH), on storage every node can read.")
        path = Path(checkpoint).expanduser().resolve()
        if not path.is_file() or label != f"{_CHECKPOINT_LABEL}{path.name}:{path.stat().st_size}":
            raise InvalidInputError(f"Checkpoint {str(path)!r} is not the file the encoder was loaded "
                                    f"from ({label}); pass that file.")
        return cls(name, str(path), precision)

    def load(self, device: str) -> Any:
        """Load the encoder on `device` (in an actor)."""
        from .model import load_model

        return load_model(self.name, self.pretrained, device=device, precision=self.precision)


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray. `actors` encoding actors (default: one per GPU of the cluster, else one per
    node while that leaves a CPU per node for decoding), each with `gpus_per_actor` GPUs (default 1
    on a cluster with GPUs, else 0: CPU actors with `cpus_per_actor` CPUs reserved and
    `threads_per_actor` torch threads, default every core of its node). `checkpoint`: the
    encoder's checkpoint file, if any (see EncoderRecipe.of). `precision`: the actors' precision
    (default the encoder's; "auto" is fp16 on GPU actors, fp32 on CPU ones)."""

    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    threads_per_actor: int | None = None
    checkpoint: str | None = None
    precision: str | None = None

    def check(self) -> None:
        """Raise InvalidInputError for an out-of-range option."""
        if self.actors is not None and self.actors < 1:
            raise InvalidInputError(f"Ray actors must be at least 1, got {self.actors}.")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise InvalidInputError("GPUs per Ray actor must be 0 (CPU actors) or more, "
                                    f"got {self.gpus_per_actor}.")
        if self.cpus_per_actor <= 0 or (self.threads_per_actor is not None and self.threads_per_actor < 1):
            raise InvalidInputError("CPUs and threads per Ray actor must be positive.")


def index_with_ray(images_dir: Path, store: EmbeddingStore, encoder: Any, *, address: str | None = None,
                   options: RayOptions | None = None, batch_size: int = 32, prune: bool = False,
                   progress: bool = True) -> IndexReport:
    """Index the new and changed images under `images_dir` into `store` (open for writing) on Ray.

    `address`: a running cluster's address (`ray start --head` prints it; "auto" finds the one this
    machine belongs to); None starts a local Ray instance, shut down at the end. A process already
    connected to Ray (`ray.init()` before) keeps its connection. Called by
    `indexing.index_images(..., engine="ray")`, which opens the store and times the run.
    """
    options = options or RayOptions()
    options.check()
    _require_ray()
    recipe = EncoderRecipe.of(encoder, checkpoint=options.checkpoint, precision=options.precision)
    plan = plan_run(images_dir, store, prune=prune)
    committer = Committer(store, plan.found, batch_size)
    if plan.todo:
        with _ray_session(address), _quiet_ray_data():
            dataset = _dataset(images_dir, plan.todo, encoder, recipe, options, batch_size=batch_size)
            try:
                _consume(dataset, plan.todo, committer, progress=progress)
            finally:
                committer.commit()  # also on Ctrl-C or a failed run: keep everything received
    return finish_report(plan, store, committer)


def _require_ray() -> None:
    try:
        import ray.data  # noqa: F401
    except ImportError as error:
        raise InvalidInputError("Indexing on Ray needs Ray Data: pip install 'clipwidgets[ray]' "
                                "(ray[data] >= 2.50), on the driver and on every node.") from error


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[None]:
    import ray

    if ray.is_initialized():  # the caller's session: leave it as it is
        yield
        return
    started = time.perf_counter()
    if address is None:
        ray_processes = _start_local_ray()
    else:
        ray_processes = []
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise RayIndexingError(f"Could not connect to the Ray cluster at {address!r}: {error}. Start it "
                                   "with `ray start --head` (see docs/distributed.md), or leave the "
                                   "address out to start a local Ray instance.") from error
    logger.info("Ray started in %.1f s: %s", time.perf_counter() - started, ray.cluster_resources())
    reaper = _start_reaper(ray_processes) if ray_processes else None
    try:
        yield
    finally:
        ray.shutdown()
        ray_reaper.kill_all(ray_processes)  # agents that outlive their raylet
        if reaper is not None:
            reaper.kill()
            reaper.wait()


def _start_local_ray(attempts: int = LOCAL_START_ATTEMPTS) -> list[str]:
    """Start a local Ray instance; returns its processes ("PID:START", see ray_reaper).

    On a busy machine the raylet can give up waiting for its agents to start ("The current node
    timed out during startup"); a second attempt finds their imports in the page cache.
    """
    import ray

    # A local instance is this machine's own: it reports no usage statistics (Ray's telemetry, and
    # Ray Data's queries of a Prometheus server that is not there) unless the user asked for them.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    before = set(ray_reaper.descendants([os.getpid()])) if _HAS_PROC else set()
    attempt = 1
    while True:
        try:
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        except Exception as error:  # Ray raises a bare Exception for a raylet that did not start
            ray.shutdown()
            ray_reaper.kill_all(_new_processes(before))
            if "timed out during startup" not in str(error) or attempt == attempts:
                raise RayIndexingError(f"A local Ray instance did not start: {error}") from error
            logger.warning("Ray did not start (%s); trying again.", error)
            attempt += 1
        else:
            return _new_processes(before)


def _new_processes(before: set[int]) -> list[str]:
    """This process's descendants that were not there `before`, as "PID:START"."""
    if not _HAS_PROC:
        return []
    pids = [pid for pid in ray_reaper.descendants([os.getpid()]) if pid not in before and pid != os.getpid()]
    return [target for target in map(ray_reaper.identity, pids) if target is not None]


def _start_reaper(targets: list[str]) -> subprocess.Popen:
    """A watchdog that kills the local Ray instance's processes if this process dies without
    `ray.shutdown()` (SIGKILL): see ray_reaper."""
    return subprocess.Popen([sys.executable, "-m", "clipwidgets.ray_reaper", str(os.getpid()), *targets],
                            stdin=subprocess.DEVNULL, start_new_session=True)


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's own progress bars and per-run INFO lines off: the driver shows its own bar."""
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.print_on_execution_start
    context.enable_progress_bars, context.print_on_execution_start = False, False
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved
        data_logger.setLevel(level)


def _dataset(images_dir: Path, todo: list[str], encoder: Any, recipe: EncoderRecipe, options: RayOptions,
             *, batch_size: int) -> Any:
    """files -> decode (CPU tasks) -> encode (actor pool) -> rows of path, embedding, size, reason."""
    import ray
    import ray.data

    actors, gpus = _pool_size(options)
    spec = ModelInputSpec.from_meta(encoder.meta["preprocess"])
    blocks = max(1, math.ceil(len(todo) / batch_size))
    files = ray.data.from_items([{"path": path} for path in todo], override_num_blocks=blocks)
    # Finite retries: a file that kills its worker must not be retried forever (Ray Data's default).
    # They also keep the two stages from being fused into one actor stage. Ray 2.60 has no other way
    # to set them than its deprecated **ray_remote_args (until 2.64: the `ray` extra pins below it).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        decode = functools.partial(_decode_batch, root=str(images_dir.resolve()), spec=spec,
                                   max_image_pixels=Image.MAX_IMAGE_PIXELS)
        decoded = files.map_batches(decode, batch_size=batch_size, num_cpus=1, max_retries=DECODE_RETRIES)
    return decoded.map_batches(
        _EncodeActor, batch_size=batch_size, zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus or None,
        num_cpus=None if gpus else options.cpus_per_actor,
        fn_constructor_kwargs={"recipe": recipe, "device": "cuda" if gpus else "cpu",
                               "threads": options.threads_per_actor,
                               "expected": _model_identity(encoder.meta)})


def _pool_size(options: RayOptions) -> tuple[int, float]:
    """(encoding actors, GPUs per actor) from the options and the cluster's resources."""
    import ray

    resources = ray.cluster_resources()
    cluster_gpus = int(resources.get("GPU", 0))
    gpus = options.gpus_per_actor if options.gpus_per_actor is not None else (1.0 if cluster_gpus else 0.0)
    if options.actors is not None:
        return options.actors, gpus
    if gpus:
        return max(1, int(cluster_gpus / gpus)), gpus
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    cpus = int(resources.get("CPU", 1))
    return max(1, min(nodes, int(cpus // (options.cpus_per_actor + 1)))), 0.0


def _model_identity(meta: dict[str, Any]) -> dict[str, Any]:
    return {key: meta[key] for key in ("name", "pretrained", "embed_dim", "preprocess")}


def _decode_batch(batch: dict[str, np.ndarray], *, root: str, spec: ModelInputSpec,
                  max_image_pixels: int | None) -> dict[str, np.ndarray]:
    """Decoding task: the local indexer's decoder on each file; a skipped file keeps its reason."""
    Image.MAX_IMAGE_PIXELS = max_image_pixels  # the driver's limit, as local workers get it
    relpaths = [str(path) for path in batch["path"]]
    results = load_model_inputs([os.path.join(root, path) for path in relpaths], spec)
    blank = np.zeros((*spec.image_size, 3) if spec.supported else (1, 1, 3), dtype=np.uint8)
    arrays = [blank if isinstance(result, str) else result[0] for result in results]
    sizes = [(0, 0) if isinstance(result, str) else result[1] for result in results]
    if spec.supported:
        pixels = np.stack(arrays)
    else:  # whole images of any size: a variable-shaped tensor column
        pixels = np.empty(len(arrays), dtype=object)
        pixels[:] = arrays
    reasons = [result if isinstance(result, str) else "" for result in results]
    return {"path": np.array(relpaths, dtype=object), "pixels": pixels,
            "width": np.array([width for width, _ in sizes], dtype=np.int64),
            "height": np.array([height for _, height in sizes], dtype=np.int64),
            "reason": np.array(reasons, dtype=object)}


class _EncodeActor:
    """Encoding actor: loads the encoder once, then embeds each batch's decoded images."""

    def __init__(self, recipe: EncoderRecipe, device: str, threads: int | None,
                 expected: dict[str, Any]) -> None:
        import torch

        if device == "cpu":  # Ray sets OMP_NUM_THREADS to the CPUs reserved; the model wants every core
            torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        self.encoder = recipe.load(device)
        found = _model_identity(self.encoder.meta)
        if found != expected:
            raise RayIndexingError(f"This node's encoder {found} differs from the driver's {expected}; "
                                   "install the same clipwidgets and open_clip versions on every node.")
        self.to_tensor = Normaliser(self.encoder, ModelInputSpec.from_meta(self.encoder.meta["preprocess"]))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = np.flatnonzero(np.asarray([reason == "" for reason in batch["reason"]], dtype=bool))
        embeddings = np.zeros((len(batch["path"]), self.encoder.dim), dtype=np.float32)
        if len(good):
            embeddings[good] = self.encoder.encode_pixels(self.to_tensor([batch["pixels"][i] for i in good]))
        return {"path": batch["path"], "embedding": embeddings, "width": batch["width"],
                "height": batch["height"], "reason": batch["reason"]}


def _consume(dataset: Any, todo: list[str], committer: Committer, *, progress: bool) -> None:
    """Commit the rows as they stream in; a path already received (a retried task) is ignored."""
    import ray.exceptions
    from tqdm.auto import tqdm

    received: set[str] = set()
    started = time.perf_counter()
    with tqdm(total=len(todo), unit="img", desc="indexing (ray)", disable=not progress,
              dynamic_ncols=True, smoothing=0.1) as bar:
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                if not received:
                    logger.info("First results after %.1f s (tasks and actors starting, models loading)",
                                time.perf_counter() - started)
                bar.update(_commit_rows(batch, committer, received))
                bar.set_postfix(skipped=len(committer.skipped), refresh=False)
        except ray.exceptions.RayError as error:
            raise RayIndexingError(
                f"The Ray run stopped after {len(received):,} of {len(todo):,} files: {_first_line(error)}. "
                "Everything received is committed; run the same command again to resume. A task that "
                f"died {DECODE_RETRIES + 1} times may be a file that crashes the image decoder: the "
                "local indexer (without --ray) finds and skips such files.") from error
    if len(received) < len(todo):
        logger.warning("%d files got no result from Ray; run again to index them.", len(todo) - len(received))


def _commit_rows(batch: dict[str, np.ndarray], committer: Committer, received: set[str]) -> int:
    """Hand a streamed batch's new rows to the committer; returns how many were new."""
    paths: list[str] = []
    rows: list[int] = []
    fresh = 0
    for row, path in enumerate(str(path) for path in batch["path"]):
        if path in received:
            continue
        received.add(path)
        fresh += 1
        reason = str(batch["reason"][row])
        if reason:
            committer.add_skipped(path, reason)
        else:
            paths.append(path)
            rows.append(row)
    if paths:
        sizes = [(int(batch["width"][row]), int(batch["height"][row])) for row in rows]
        committer.add_images(paths, np.asarray(batch["embedding"])[rows], sizes)
    return fresh


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
