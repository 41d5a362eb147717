"""Indexing on Ray (clipwidgets.distributed): the same embeddings and skips as the local indexer, on a
2-node local cluster (1 CPU each) with the tiny model; an encoding actor killed mid-run; a driver
killed with SIGKILL, then a resume; no Ray process left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray
import ray.data
from ray.cluster_utils import Cluster
from test_images import write_bad_images

from clipwidgets import committer as committer_module
from clipwidgets import ray_reaper
from clipwidgets.cli import main
from clipwidgets.distributed import EncoderRecipe, RayOptions
from clipwidgets.errors import InvalidInputError
from clipwidgets.indexing import index_images
from clipwidgets.store import EmbeddingStore
from clipwidgets.synthetic import make_photos

pytestmark = pytest.mark.slow
NODE = {"num_cpus": 1, "object_store_memory": 150 * 2**20}
PHOTOS = 40


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes with 1 CPU each on this machine, shared by the module's tests."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no telemetry, as local runs do
    nodes = _start_cluster()
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()
        _, alive = psutil.wait_procs(_encoding_actors(), timeout=60)  # workers notice their raylet is gone
        for process in alive:
            process.kill()


def _start_cluster(attempts: int = 3) -> Cluster:
    """On a busy machine a raylet can give up waiting for its agents ("timed out during startup");
    a second attempt finds their imports in the page cache (as clipwidgets.distributed does)."""
    for attempt in range(1, attempts + 1):
        nodes = Cluster()
        try:
            nodes.add_node(**NODE, include_dashboard=False)
            nodes.add_node(**NODE)
            nodes.wait_for_nodes()
            return nodes
        except Exception as error:
            nodes.shutdown()
            if "timed out during startup" not in str(error) or attempt == attempts:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """(folder, {relpath of each bad file: reason}): photos plus corrupt, truncated and non-image files."""
    root = tmp_path_factory.mktemp("ray") / "images"
    make_photos(root, PHOTOS)
    bad = write_bad_images(root / "bad")
    return root, {f"bad/{name}": reason for name, reason in bad.items()}


@pytest.fixture(scope="module")
def reference(collection, tiny_encoder, tmp_path_factory):
    """{relpath: embedding} and the skip list from the local indexer."""
    root, _ = collection
    store_path = tmp_path_factory.mktemp("local") / "local.h5"
    report = index_images(root, store_path, tiny_encoder, batch_size=4, workers=0, progress=False)
    with EmbeddingStore.open(store_path) as store:
        embeddings = dict(zip(store.image_paths(), store.image_embeddings().astype(np.float32), strict=True))
    return embeddings, report.skipped_files


def _embeddings(store_path: Path) -> dict[str, np.ndarray]:
    with EmbeddingStore.open(store_path) as store:
        paths = store.image_paths()
        assert len(paths) == len(set(paths)), "an image was stored twice"
        return dict(zip(paths, store.image_embeddings().astype(np.float32), strict=True))


def _max_difference(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    assert sorted(found) == sorted(expected)
    return max(float(np.abs(found[path] - expected[path]).max()) for path in expected)


def _encoding_actors() -> list[psutil.Process]:
    actors = []
    for process in psutil.process_iter(["cmdline"]):
        if any("_EncodeActor" in part for part in process.info["cmdline"] or []):
            actors.append(process)
    return actors


def test_cli_on_a_two_node_cluster_matches_the_local_indexer(cluster, collection, reference, tmp_path,
                                                             capsys, tiny_encoder):
    root, bad = collection
    expected, expected_skips = reference
    store_path = tmp_path / "ray.h5"
    status = main(["index", str(root), "--store", str(store_path), "--model", "tiny", "--batch-size", "4",
                   "--ray", cluster.address, "--json"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["indexed"], summary["skipped"]) == (PHOTOS, len(bad))
    assert summary["skipped_files"] == expected_skips
    assert {entry["path"]: entry["reason"] for entry in summary["skipped_files"]} == bad
    assert _max_difference(_embeddings(store_path), expected) <= 1e-6
    assert not ray.is_initialized()  # the CLI disconnected

    again = index_images(root, store_path, tiny_encoder, engine="ray", ray_address=cluster.address,
                         progress=False)
    assert (again.indexed, again.unchanged, again.skipped) == (0, PHOTOS, len(bad))
    assert again.skipped_files == expected_skips


def test_an_encoding_actor_killed_mid_run(cluster, collection, reference, tmp_path, tiny_encoder,
                                          monkeypatch):
    root, bad = collection
    expected, expected_skips = reference
    # A small in-flight budget, so that most of the work is still to do when the actor dies.
    context = ray.data.DataContext.get_current()
    monkeypatch.setattr(context.execution_options, "resource_limits",
                        ray.data.ExecutionResources(object_store_memory=2 * 2**20))
    killed: list[int] = []
    replaced: list[int] = []
    original = committer_module.Committer.add_images

    def add_images(self, paths, embeddings, sizes):
        if not killed:
            before = _encoding_actors()  # this run's actor is the newest (an earlier run's may be ending)
            actor = max(before, key=lambda process: process.create_time())
            actor.send_signal(signal.SIGKILL)
            actor.wait(30)
            killed.append(actor.pid)
            deadline = time.monotonic() + 120
            while not replaced and time.monotonic() < deadline:  # Ray restarts it
                replaced.extend(process.pid for process in _encoding_actors() if process not in before)
                time.sleep(0.2)
        original(self, paths, embeddings, sizes)

    monkeypatch.setattr(committer_module.Committer, "add_images", add_images)
    store_path = tmp_path / "killed.h5"
    report = index_images(root, store_path, tiny_encoder, batch_size=2, engine="ray",
                          ray_address=cluster.address, progress=False)
    assert killed and replaced, "the encoding actor was not killed and restarted"
    assert (report.indexed, report.skipped) == (PHOTOS, len(bad))
    assert report.skipped_files == expected_skips
    assert _max_difference(_embeddings(store_path), expected) <= 1e-6


DRIVER = """
import sys, time
from clipwidgets import committer
from clipwidgets.indexing import index_images
from clipwidgets.model import load_model

add_images = committer.Committer.add_images
def add_commit_and_hang(self, *args):  # commit the first images received, then wait for SIGKILL
    add_images(self, *args)
    self.commit()
    print("COMMITTED", self.images_committed, flush=True)
    time.sleep(600)
committer.Committer.add_images = add_commit_and_hang
if __name__ == "__main__":
    index_images(sys.argv[1], sys.argv[2], load_model("tiny", device="cpu"), batch_size=4, engine="ray",
                 ray_address=sys.argv[3] if len(sys.argv) > 3 else None, progress=False)
"""


def _kill_driver_after_its_first_commit(tmp_path: Path, *args: str) -> tuple[int, dict[psutil.Process, str]]:
    """Run DRIVER with `args`, SIGKILL it once it has committed some images; returns how many, and the
    processes it had started (with their children) and their command lines."""
    script, log = tmp_path / "driver.py", tmp_path / "driver.log"
    script.write_text(DRIVER)
    with open(log, "w") as stderr:
        driver = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                                  stderr=stderr, text=True, start_new_session=True)
    try:
        line = driver.stdout.readline()  # blocks until the first commit (or the driver's end)
        assert line.startswith("COMMITTED"), log.read_text()
        started = {}
        for process in psutil.Process(driver.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                started[process] = " ".join(process.cmdline())
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    return int(line.split()[1]), started


def test_driver_killed_with_sigkill_then_a_rerun_does_only_the_missing_files(
        cluster, collection, reference, tmp_path, tiny_encoder):
    root, bad = collection
    expected, _ = reference
    store_path = tmp_path / "resumed.h5"
    committed, _ = _kill_driver_after_its_first_commit(tmp_path, str(root), str(store_path), cluster.address)
    deadline = time.monotonic() + 60
    while _encoding_actors() and time.monotonic() < deadline:  # the cluster ends the dead driver's job
        time.sleep(0.5)
    assert not _encoding_actors()
    with EmbeddingStore.open(store_path) as store:
        assert store.num_images == committed < PHOTOS

    report = index_images(root, store_path, tiny_encoder, batch_size=4, engine="ray",
                          ray_address=cluster.address, progress=False)
    assert report.indexed == PHOTOS - committed  # only what the killed run had not committed
    assert report.unchanged == committed
    assert report.skipped == len(bad)
    assert _max_difference(_embeddings(store_path), expected) <= 1e-6


def test_a_driver_killed_with_sigkill_takes_its_local_ray_instance_along(collection, tmp_path):
    root, _ = collection
    _, started = _kill_driver_after_its_first_commit(tmp_path, str(root), str(tmp_path / "local.h5"))
    assert any("raylet" in command for command in started.values())
    _, alive = psutil.wait_procs(list(started), timeout=60)
    assert not alive, f"Ray processes outlived their driver: {[started[process] for process in alive]}"


def test_reaper_kills_its_targets_once_the_driver_is_gone():
    driver = subprocess.Popen(["sleep", "600"])
    target = subprocess.Popen(["sleep", "600"])
    try:
        reaper = subprocess.Popen([sys.executable, "-m", "clipwidgets.ray_reaper", str(driver.pid),
                                   ray_reaper.identity(target.pid), f"{driver.pid}:0"])
        time.sleep(1.0)
        assert target.poll() is None and reaper.poll() is None  # nothing happens while the driver lives
        driver.kill()
        driver.wait()
        assert reaper.wait(30) == 0
        assert target.wait(30) == -signal.SIGKILL
    finally:
        for process in (driver, target):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_encoder_recipe_rebuilds_from_name_and_weights(tiny_encoder, tmp_path):
    assert EncoderRecipe.of(tiny_encoder) == EncoderRecipe("tiny", None, "fp32")
    assert EncoderRecipe.of(tiny_encoder, precision="auto").precision == "auto"
    assert EncoderRecipe.of(tiny_encoder).load("cpu").meta == tiny_encoder.meta

    class FromCheckpoint:
        meta = {"name": "ViT-B-32", "pretrained": "checkpoint:weights.pt:4"}
        precision = "fp32"

    with pytest.raises(InvalidInputError, match="pass its path"):
        EncoderRecipe.of(FromCheckpoint())
    other = tmp_path / "weights.pt"
    other.write_bytes(b"12345")  # 5 bytes: not the file the encoder was loaded from
    with pytest.raises(InvalidInputError, match="is not the file"):
        EncoderRecipe.of(FromCheckpoint(), checkpoint=other)
    other.write_bytes(b"1234")
    assert EncoderRecipe.of(FromCheckpoint(), checkpoint=other).pretrained == str(other.resolve())


@pytest.mark.parametrize(("options", "message"), [
    (RayOptions(actors=0), "actors must be at least 1"),
    (RayOptions(gpus_per_actor=-1), "0 \\(CPU actors\\) or more"),
    (RayOptions(cpus_per_actor=0), "must be positive"),
])
def test_bad_ray_options_are_refused_before_anything_starts(photo_dir, tmp_path, tiny_encoder, options,
                                                           message):
    with pytest.raises(InvalidInputError, match=message):
        index_images(photo_dir, tmp_path / "s.h5", tiny_encoder, engine="ray", ray_options=options)
    assert not ray.is_initialized()


def test_unknown_engine_is_refused(photo_dir, tmp_path, tiny_encoder):
    with pytest.raises(InvalidInputError, match="Unknown engine 'spark'"):
        index_images(photo_dir, tmp_path / "s.h5", tiny_encoder, engine="spark")
