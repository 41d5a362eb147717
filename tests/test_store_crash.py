"""EmbeddingStore under real processes: SIGKILLed writers and readers that keep working during writes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np

from clipwidgets.store import EmbeddingStore

BATCH = 32
DIM = 64
META = {"name": "tiny", "pretrained": "random-seed-0", "embed_dim": DIM}
REPO = Path(__file__).resolve().parents[1]

# A writer that appends batches of BATCH images (+ one caption each) and prints the image count after
# every commit (in "step" mode only after reading a line from stdin). Row i's vector and path depend
# only on i, so any committed state can be checked.
WRITER = textwrap.dedent(f"""
    import sys
    import numpy as np
    from clipwidgets.store import EmbeddingStore

    def rows(start, stop):
        i = np.arange(start, stop, dtype=np.float64)[:, None]
        v = np.sin(np.arange({DIM})[None, :] * (i + 1) * 0.37 + i)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    path, root, batches, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = EmbeddingStore.open_or_create(path, {META!r}, root)
    print("ready", store.num_images, flush=True)
    for _ in range(batches):
        if mode == "step":
            sys.stdin.readline()  # the test says when to write the next batch
        n = store.num_images
        with store.batch():
            store.add_images([f"img_{{i:06d}}.jpg" for i in range(n, n + {BATCH})], rows(n, n + {BATCH}),
                             sizes=list(range(n, n + {BATCH})), mtimes_ns=[7] * {BATCH},
                             widths=[64] * {BATCH}, heights=[48] * {BATCH})
            store.add_texts([f"caption of {{n}}"], rows(n, n + 1), image_index=[n])
        print(store.num_images, flush=True)
        if mode == "compact":  # merge every segment into one: the longest commit there is
            store.compact(full=True)
            print(store.num_images, flush=True)
""")


def expected_rows(count: int) -> np.ndarray:
    i = np.arange(count, dtype=np.float64)[:, None]
    v = np.sin(np.arange(DIM)[None, :] * (i + 1) * 0.37 + i)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)


def start_writer(store_path: Path, root: Path, batches: int, *, mode: str = "run") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", WRITER, str(store_path), str(root), str(batches), mode]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    first = process.stdout.readline()
    assert first.startswith("ready"), process.stderr.read()
    return process


def assert_consistent(store: EmbeddingStore) -> int:
    """Every batch is complete and holds exactly the writer's deterministic rows."""
    count = store.num_images
    assert count % BATCH == 0
    assert store.image_paths() == [f"img_{i:06d}.jpg" for i in range(count)]
    assert np.array_equal(store.image_embeddings(), expected_rows(count))
    assert store.image_meta()["size"].tolist() == list(range(count))
    starts = list(range(0, count, BATCH))
    assert store.texts() == [f"caption of {n}" for n in starts]
    assert store.text_image_index().tolist() == starts
    assert np.array_equal(store.text_embeddings(), expected_rows(count)[starts])
    return count


def kill_writers_at_random(store_path: Path, root: Path, kills: int, *, mode: str, seed: int) -> int:
    """Start and SIGKILL `kills` writers, each after a random number of commits plus a random delay;
    after each, the store must hold a whole-commit prefix. Returns the final image count."""
    rng = random.Random(seed)
    reported = 0
    for _ in range(kills):
        writer = start_writer(store_path, root, batches=10_000, mode=mode)
        for _ in range(rng.randint(0, 3)):  # wait for progress, not for a time: robust on a busy machine
            reported = int(writer.stdout.readline())
        time.sleep(rng.uniform(0.0, 0.05))
        writer.send_signal(signal.SIGKILL)
        output = writer.stdout.read()  # not communicate(): it would skip lines readline() buffered
        assert writer.wait() == -signal.SIGKILL
        for stream in (writer.stdin, writer.stdout, writer.stderr):
            stream.close()
        reported = max([reported, *(int(line) for line in output.split())])
        with EmbeddingStore.open(store_path) as reader:
            count = assert_consistent(reader)
        assert reported <= count <= reported + BATCH  # at most the one commit that was not yet printed
        reported = count
    return reported


def assert_no_leftovers(store_path: Path) -> None:
    EmbeddingStore.open(store_path, "a").close()  # a writer removes what killed writers left
    with h5py.File(store_path, "r") as f:
        listed = set(f["segments/name"].asstr()[()].tolist())
        text_file = f.get("texts", getlink=True)
    listed.add(text_file.filename.rpartition("/")[2])
    folder = store_path.with_name(store_path.name + ".d")
    assert sorted(p.name for p in folder.iterdir()) == sorted(listed)
    assert [p.name for p in store_path.parent.iterdir() if ".tmp-" in p.name] == []


def test_sigkill_at_random_moments_never_loses_or_tears_a_commit(tmp_path):
    """25 writers, each killed after a random number of commits plus a random delay (mid-write mostly)."""
    store_path, root = tmp_path / "crash.h5", tmp_path / "images"
    root.mkdir()
    assert kill_writers_at_random(store_path, root, 25, mode="run", seed=20261126) >= 25 * BATCH
    assert_no_leftovers(store_path)


def test_sigkill_during_compaction_never_loses_or_tears_a_commit(tmp_path):
    """10 writers that compact the whole store after every commit, killed at random moments."""
    store_path, root = tmp_path / "compact.h5", tmp_path / "images"
    root.mkdir()
    assert kill_writers_at_random(store_path, root, 10, mode="compact", seed=14) >= 5 * BATCH
    assert_no_leftovers(store_path)
    with EmbeddingStore.open(store_path) as reader:
        assert len(reader.vector_blocks()) <= 2  # compacted, plus at most the last commit


def test_readers_keep_working_while_another_process_writes(tmp_path):
    store_path, root = tmp_path / "live.h5", tmp_path / "images"
    root.mkdir()
    start_writer(store_path, root, batches=1).communicate()
    stale = EmbeddingStore.open(store_path)
    live = EmbeddingStore.open(store_path)
    stale_rows = stale.image_embeddings().copy()
    assert live.refresh() is False
    writer = start_writer(store_path, root, batches=20, mode="step")
    for step in range(2, 22):
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert int(writer.stdout.readline()) == step * BATCH  # committed
        assert live.refresh() is True and assert_consistent(live) == step * BATCH
        assert live.refresh() is False
        assert stale.num_images == BATCH and np.array_equal(stale.image_embeddings(), stale_rows)
    writer.stdin.close()
    assert writer.wait() == 0, writer.stderr.read()
    writer = start_writer(store_path, root, batches=20)  # free-running: reads land during writes
    while writer.poll() is None:
        if live.refresh():
            assert_consistent(live)
        assert stale.num_images == BATCH and np.array_equal(stale.image_embeddings(), stale_rows)
    assert writer.wait() == 0, writer.stderr.read()
    assert stale.refresh() is True and assert_consistent(stale) == 41 * BATCH


def test_a_writer_in_another_process_is_refused(tmp_path):
    store_path, root = tmp_path / "locked.h5", tmp_path / "images"
    root.mkdir()
    with EmbeddingStore.create(store_path, META, root):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        code = ("import sys; from clipwidgets.store import EmbeddingStore\n"
                "from clipwidgets.errors import StoreError\n"
                "try: EmbeddingStore.open(sys.argv[1], 'a')\n"
                "except StoreError as e: print(e); sys.exit(3)\n")
        result = subprocess.run([sys.executable, "-c", code, str(store_path)], capture_output=True,
                                text=True, env=env, timeout=60)
    assert result.returncode == 3 and "Another process is writing" in result.stdout


def test_a_real_failed_write_keeps_the_previous_file(tmp_path):
    """The OS refuses to grow the temp file (RLIMIT_FSIZE, like a full disk): the store stays as it was."""
    store_path, root = tmp_path / "full.h5", tmp_path / "images"
    root.mkdir()
    start_writer(store_path, root, batches=2).communicate()
    before = store_path.read_bytes()
    code = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        from clipwidgets.errors import StoreError
        from clipwidgets.store import EmbeddingStore

        store = EmbeddingStore.open(sys.argv[1], "a")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        limit = len(open(sys.argv[1], "rb").read()) + 4096
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        rows = np.full((2000, {DIM}), {DIM} ** -0.5)
        try:
            store.add_images([f"big_{{i}}.jpg" for i in range(2000)], rows, sizes=[1] * 2000,
                             mtimes_ns=[1] * 2000, widths=[1] * 2000, heights=[1] * 2000)
        except StoreError as error:
            print(error)
            sys.exit(3)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code, str(store_path)], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "Could not save store" in result.stdout and "File too large" in result.stdout
    assert str(store_path) in result.stdout and f"previous state ({2 * BATCH} images)" in result.stdout
    assert store_path.read_bytes() == before
    assert_no_leftovers(store_path)
    with EmbeddingStore.open(store_path) as reader:
        assert assert_consistent(reader) == 2 * BATCH
