"""Indexing on Ray against the local indexer, on this machine: the same images, fp32, one process.

Runs, in this order, each into a fresh store: local, Ray (a local instance), local again; full mode adds
Ray on a 2-node local cluster (`ray.cluster_utils.Cluster`, the cores split between the nodes). The
ratio compares Ray with the mean of the two local runs around it (this machine's speed drifts).
Ray's start-up (`ray.init` of a local instance, or starting the cluster) is timed separately and is
not in the Ray throughput; the Ray run's own time includes starting its decoding tasks and encoding
actor and loading the model there ("first results after" is reported too).

Full mode: 800 generated 500x375 JPEGs, ViT-B/32 with random weights loaded from a checkpoint file
(the actors load it by path, as they would released weights). Quick mode: 64 images and the offline
`tiny` model, to keep the script working, not to measure the claim. No GPU here: the target for one
GPU actor against the local GPU path (>= 0.9) is measured by `scripts/gpu-check.sh` where one is lent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.bench_indexing import photo_folder
from benchmarks.common import RESULTS_DIR, VIT_B32, print_table, quick_main, random_vit_b32_checkpoint

BATCH_SIZE = 32
NODE_OBJECT_STORE = 512 * 2**20


class _FirstResults(logging.Handler):
    """Reads "First results after X s" from clipwidgets.distributed's log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        match = re.match(r"First results after ([\d.]+) s", record.getMessage())
        if match:
            self.seconds = float(match.group(1))


@contextlib.contextmanager
def _first_results() -> Iterator[_FirstResults]:
    log = logging.getLogger("clipwidgets.distributed")
    handler, level = _FirstResults(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _index(folder: Path, store: Path, encoder: Any, **engine: Any) -> dict[str, float]:
    from clipwidgets.indexing import index_images

    if store.exists():
        store.unlink()
    with _first_results() as first:
        started = time.perf_counter()
        report = index_images(folder, store, encoder, batch_size=BATCH_SIZE, progress=False, **engine)
        seconds = time.perf_counter() - started
    return {"images": report.indexed, "seconds": seconds, "images_per_s": report.indexed / seconds,
            "first_results_s": first.seconds}


def _ray_run(folder: Path, store: Path, encoder: Any, options: Any, start: Any) -> dict[str, Any]:
    """Start Ray with `start()` (a context manager), timed, then index on it."""
    import ray

    started = time.perf_counter()
    with start():
        startup = time.perf_counter() - started
        resources = ray.cluster_resources()
        nodes = sum(1 for node in ray.nodes() if node["Alive"])
        result = _index(folder, store, encoder, engine="ray", ray_options=options)
    return {**result, "startup_s": startup, "nodes": nodes, "cpus": resources.get("CPU")}


@contextlib.contextmanager
def _local_instance() -> Iterator[None]:
    from clipwidgets.distributed import _ray_session

    with _ray_session(None):
        yield


@contextlib.contextmanager
def _two_node_cluster() -> Iterator[None]:
    import ray
    from ray.cluster_utils import Cluster

    cores = len(os.sched_getaffinity(0))
    per_node = {"num_cpus": max(1, cores // 2), "object_store_memory": NODE_OBJECT_STORE}
    nodes = Cluster()
    try:
        nodes.add_node(**per_node, include_dashboard=False)
        nodes.add_node(**per_node)
        nodes.wait_for_nodes()
        ray.init(address=nodes.address, logging_level=logging.WARNING)
        yield
    finally:
        ray.shutdown()
        nodes.shutdown()


def run(quick: bool) -> dict[str, Any]:
    from clipwidgets.distributed import RayOptions
    from clipwidgets.model import load_model

    count = 64 if quick else 800
    folder = photo_folder(count)
    if quick:
        encoder, options = load_model("tiny", device="cpu", precision="fp32"), RayOptions()
    else:
        checkpoint = random_vit_b32_checkpoint()
        encoder = load_model(VIT_B32, str(checkpoint), device="cpu", precision="fp32")
        options = RayOptions(checkpoint=str(checkpoint))
    work = RESULTS_DIR / "cache" / "distributed"
    work.mkdir(parents=True, exist_ok=True)
    try:
        local_1 = _index(folder, work / "local.h5", encoder)
        ray_local = _ray_run(folder, work / "ray.h5", encoder, options, _local_instance)
        local_2 = _index(folder, work / "local.h5", encoder)
        cluster = None
        if not quick:
            cluster = _ray_run(folder, work / "cluster.h5", encoder, options, _two_node_cluster)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    local_rate = (local_1["images_per_s"] + local_2["images_per_s"]) / 2
    figures: dict[str, Any] = {
        "images": count, "model": "tiny" if quick else f"{VIT_B32} (random weights), fp32",
        "batch_size": BATCH_SIZE, "load_average_1m": round(os.getloadavg()[0], 2),
        "local_images_per_s": local_rate, "local_runs": [local_1, local_2],
        "ray_startup_s": ray_local["startup_s"], "ray_first_results_s": ray_local["first_results_s"],
        "ray_images_per_s": ray_local["images_per_s"], "ray_run": ray_local,
        "ratio_ray_vs_local": ray_local["images_per_s"] / local_rate,
    }
    rows = [["local (mean of 2)", None, None, local_rate, 1.0],
            ["Ray, local instance", ray_local["startup_s"], ray_local["first_results_s"],
             ray_local["images_per_s"], figures["ratio_ray_vs_local"]]]
    if cluster is not None:
        figures.update({"cluster_nodes": cluster["nodes"], "cluster_startup_s": cluster["startup_s"],
                        "cluster_images_per_s": cluster["images_per_s"], "cluster_run": cluster,
                        "ratio_cluster_vs_local": cluster["images_per_s"] / local_rate})
        rows.append([f"Ray, {cluster['nodes']}-node local cluster", cluster["startup_s"],
                     cluster["first_results_s"], cluster["images_per_s"], figures["ratio_cluster_vs_local"]])
    print_table(f"Indexing {count} images, {figures['model']}, load {figures['load_average_1m']}", rows,
                ["engine", "start-up s", "first results s", "images/s", "vs local"])
    return figures


if __name__ == "__main__":
    quick_main("distributed", run, __doc__.split("\n")[0])
