"""Format 2: segments, tombstones, merges, refresh, compaction, plain-h5py reading, lost and crafted files."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from clipwidgets.cli import main
from clipwidgets.errors import StoreError
from clipwidgets.store import EmbeddingStore, files, segments_folder
from clipwidgets.store import merge as merge_policy
from clipwidgets.store.merge import FACTOR, plan_merge, tier

DIM = 16
META = {"name": "tiny", "pretrained": "random-seed-0", "embed_dim": DIM}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "store.md"


def unit_rows(count: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def add(store: EmbeddingStore, paths: list[str], seed: int = 0) -> np.ndarray:
    rows = unit_rows(len(paths), seed)
    n = len(paths)
    store.add_images(paths, rows, sizes=[7] * n, mtimes_ns=[8] * n, widths=[3] * n, heights=[2] * n)
    return rows.astype(np.float16)


@pytest.fixture
def store(tmp_path):
    (tmp_path / "images").mkdir()
    with EmbeddingStore.create(tmp_path / "photos.h5", META, tmp_path / "images") as opened:
        yield opened


def segment_files(store: EmbeddingStore) -> list[Path]:
    return sorted(segments_folder(store.path).glob("seg-*.h5"))


def test_small_commits_merge_in_tiers_and_keep_every_row(store):
    expected = [add(store, [f"{i:03d}.jpg"], seed=i) for i in range(100)]
    # 100 rows in commits of one: 64 + 4 x 8 + 4 x 1, the digits of 100 in base 8
    assert [len(b.rows) for b in store.vector_blocks()] == [64, 8, 8, 8, 8, 1, 1, 1, 1]
    assert len(segment_files(store)) == 9  # merged-away files are deleted
    reader = EmbeddingStore.open(store.path)
    assert reader.image_paths() == [f"{i:03d}.jpg" for i in range(100)]
    assert np.array_equal(reader.image_embeddings(), np.concatenate(expected))
    assert all(isinstance(b.vectors, np.memmap) or isinstance(b.vectors.base, np.memmap)
               for b in reader.vector_blocks())
    assert reader.index_of("057.jpg") == 57 and reader.image_path(99) == "099.jpg"


def test_merge_policy():
    assert [tier(n) for n in (0, 1, 7, 8, 63, 64, 511, 512)] == [0, 0, 0, 1, 1, 2, 2, 3]
    small, big = [1] * FACTOR, [10_000] * FACTOR
    assert plan_merge(small, small, [100] * FACTOR, budget=10_000) == (0, FACTOR)
    assert plan_merge(big, big, [10**7] * FACTOR, budget=10**6) is None  # too big for a commit
    assert plan_merge(big, big, [10**7] * FACTOR, budget=float("inf")) == (0, FACTOR)
    assert plan_merge([100, 40], [100, 100], [1, 1], budget=10) == (1, 2)  # mostly tombstones


def test_a_long_run_of_small_commits_keeps_few_segments_without_compact(store, monkeypatch):
    """Every merge above the inline budget (here: all of them) is paid for by the credit commits
    earn, so 300 commits of 4 rows end in about 7 segments per tier, not 300, and every row is kept."""
    monkeypatch.setattr(merge_policy, "INLINE_MERGE_BYTES", 1)
    counts, kept = [], []
    for commit in range(300):
        kept.append(add(store, [f"{commit:03d}-{i}.jpg" for i in range(4)], seed=commit))
        counts.append(store.info()["segments"])
    tiers = tier(4 * 300 // FACTOR) + 1
    assert max(counts) <= (FACTOR - 1) * tiers + 1 and counts[-1] < 300 // FACTOR
    reader = EmbeddingStore.open(store.path)
    assert np.array_equal(reader.image_embeddings(), np.concatenate(kept))
    assert reader.image_path(1199) == "299-3.jpg" and len(segment_files(reader)) == counts[-1]
    with h5py.File(store.path, "r") as f:  # the credit left over is recorded in the manifest
        assert 0 <= int(f.attrs["merge_credit"]) <= reader.info()["segment_bytes"]


def test_without_credit_big_merges_wait_for_compact(store, monkeypatch):
    monkeypatch.setattr(merge_policy, "INLINE_MERGE_BYTES", 1)
    monkeypatch.setattr(merge_policy, "CREDIT_PER_BYTE", 0)
    monkeypatch.setattr(files, "CREDIT_PER_BYTE", 0)
    for commit in range(2 * FACTOR):
        add(store, [f"{commit:03d}.jpg"], seed=commit)
    assert store.info()["segments"] == 2 * FACTOR and store.info()["merges_due"]
    store.compact()
    assert store.info()["segments"] == 2 and not store.info()["merges_due"]


def test_tombstones_blocks_and_compaction(store):
    rows = np.concatenate([add(store, [f"a{i}.jpg" for i in range(5)]),
                           add(store, [f"b{i}.jpg" for i in range(5)], seed=1)])
    store.add_texts(["of a1", "of b3", "free"], unit_rows(3, 5), image_index=[1, 8, -1])
    assert store.remove(["a1.jpg", "b0.jpg", "nope.jpg"]) == 2
    blocks = store.vector_blocks()
    assert [b.rows.tolist() for b in blocks] == [[0, -1, 1, 2, 3], [-1, 4, 5, 6, 7]]
    kept = [0, 2, 3, 4, 6, 7, 8, 9]
    assert np.array_equal(store.image_embeddings(), rows[kept])
    assert store.texts() == ["of b3", "free"] and store.text_image_index().tolist() == [6, -1]
    with h5py.File(store.path, "r") as f:
        assert len(f["images/deleted"]) == 2 and f["images/embeddings"].shape == (10, DIM)
    info = store.info()
    assert (info["images"], info["tombstones"], info["segments"], info["merges_due"]) == (8, 2, 2, False)
    assert main(["compact", "--store", str(store.path)]) == 2  # the writer holds the lock
    store.close()
    assert main(["compact", "--store", str(store.path), "--full", "--json"]) == 0
    reader = EmbeddingStore.open(store.path)
    assert reader.info()["tombstones"] == 0 and len(reader.vector_blocks()) == 1
    assert np.array_equal(reader.image_embeddings(), rows[kept])
    assert reader.captions(6) == ["of b3"] and len(segment_files(reader)) == 1


def test_replaced_image_moves_to_the_end_with_its_captions(store):
    add(store, ["a.jpg", "b.jpg", "c.jpg"])
    store.add_texts(["cap a"], unit_rows(1), image_index=[0])
    new = add(store, ["a.jpg"], seed=9)
    assert store.image_paths() == ["b.jpg", "c.jpg", "a.jpg"]
    assert store.captions(2) == ["cap a"] and np.array_equal(store.image_embeddings()[2], new[0])
    assert store.diff({"a.jpg": (7, 8), "b.jpg": (7, 8), "c.jpg": (1, 1)}).changed == ["c.jpg"]


def test_refresh_maps_only_new_segments_and_survives_merges(store):
    add(store, ["a.jpg"])
    reader = EmbeddingStore.open(store.path)
    first = reader.vector_blocks()[0].vectors
    add(store, ["b.jpg"], seed=1)
    assert reader.refresh() is True and reader.num_images == 2
    assert reader.vector_blocks()[0].vectors is first  # the old segment was not mapped again
    old = EmbeddingStore.open(store.path)
    before = old.image_embeddings().copy()
    store.compact(full=True)  # deletes the files `old` has mapped
    assert len(segment_files(store)) == 1
    assert np.array_equal(old.image_embeddings(), before) and old.image_paths() == ["a.jpg", "b.jpg"]
    assert old.refresh() is True and len(old.vector_blocks()) == 1


def test_plain_h5py_recipe_in_the_docs(store, monkeypatch):
    """The reading recipe of docs/store.md, run as written on a store with tombstones and captions."""
    add(store, ["a.jpg", "sub/b.jpg", "c.jpg"])
    add(store, ["d.jpg"], seed=1)
    store.add_texts(["of d", "free"], unit_rows(2, 2), image_index=[3, -1])
    store.remove(["a.jpg"])
    pattern = r"## Reading a store with plain h5py\n.*?```python\n(.*?)```"
    recipe = re.search(pattern, DOCS.read_text(), re.S)[1]
    monkeypatch.chdir(store.path.parent.parent)
    Path("store").mkdir()
    shutil.move(store.path, "store/photos.h5")
    shutil.move(segments_folder(store.path), "store/photos.h5.d")
    names: dict = {}
    exec(compile(recipe, str(DOCS), "exec"), names)
    reader = EmbeddingStore.open("store/photos.h5")
    assert names["paths"] == reader.image_paths() == ["sub/b.jpg", "c.jpg", "d.jpg"]
    assert np.array_equal(names["vectors"], reader.image_embeddings())
    assert names["captions"].tolist() == reader.texts()
    assert names["image_of_caption"].tolist() == reader.text_image_index().tolist() == [2, -1]
    assert names["attrs"]["format_version"] == 2


def test_missing_truncated_and_escaping_segments_are_named(store, tmp_path, capsys):
    add(store, ["a.jpg", "b.jpg"])
    add(store, ["c.jpg"], seed=1)
    store.add_texts(["of c"], unit_rows(1), image_index=[2])
    store.close()
    _, second = segment_files(store)
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=rf"{second.name} has {len(data) // 2} bytes.*--drop-missing"):
        EmbeddingStore.open(store.path)
    second.unlink()
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match=rf"Segment file .*{second.name} is missing"):
            EmbeddingStore.open(store.path, mode)
    assert main(["info", "--store", str(store.path)]) == 2
    assert second.name in capsys.readouterr().err
    assert main(["compact", "--store", str(store.path), "--drop-missing", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files_dropped"] == [second.name] and summary["images"] == 2
    reader = EmbeddingStore.open(store.path)
    assert reader.image_paths() == ["a.jpg", "b.jpg"] and reader.texts() == []  # c's caption went with it
    with h5py.File(store.path, "a") as f:
        del f["segments/name"]
        f["segments/name"] = np.array([b"../../outside.h5"], dtype=h5py.string_dtype())
    with pytest.raises(StoreError, match=r"lists the file '../../outside.h5', which is not a file name of "
                                         r"its folder photos.h5.d/"):
        EmbeddingStore.open(store.path)


def test_writer_deletes_what_killed_writers_left(store):
    add(store, ["a.jpg"])
    folder = segments_folder(store.path)
    store.close()
    stray = folder / "seg-00000000000000ff-0badf00d.h5"
    temp = folder / ".seg-00000000000000ff-0badf00d.h5.tmp-123-abcdef01"
    foreign = folder / "notes.txt"
    for file in (stray, temp, foreign):
        file.write_bytes(b"x")
    EmbeddingStore.open(store.path).close()
    assert stray.exists() and temp.exists()  # readers never delete anything
    EmbeddingStore.open(store.path, "a").close()
    assert not stray.exists() and not temp.exists() and foreign.exists()


def test_a_new_store_over_the_folder_of_a_deleted_one(tmp_path, store):
    add(store, ["a.jpg"])
    store.close()
    store.path.unlink()  # the user deleted the manifest only
    with EmbeddingStore.create(store.path, META, store.image_root) as fresh:
        assert fresh.num_images == 0 and segment_files(fresh) == []


def test_a_reader_racing_a_merge_reads_the_new_manifest(store, monkeypatch):
    from clipwidgets.store import manifest

    add(store, ["a.jpg"])
    add(store, ["b.jpg"], seed=1)
    original, raced = manifest.map_segment, []

    def racing(*args, **kwargs):
        if not raced:  # the writer merges (and deletes the segments) just before the reader maps them
            raced.append(True)
            store.compact(full=True)
        return original(*args, **kwargs)

    monkeypatch.setattr(manifest, "map_segment", racing)
    reader = EmbeddingStore.open(store.path)
    assert raced and reader.image_paths() == ["a.jpg", "b.jpg"] and len(reader.vector_blocks()) == 1


def test_a_merge_deleting_a_segment_while_it_is_mapped_is_harmless(store, monkeypatch):
    """A merge can delete a segment right after a reader checked its size and before it maps it (CI
    saw FileNotFoundError there): the reader holds the file open, so the map still works."""
    from clipwidgets.store import segments

    add(store, ["a.jpg"])
    add(store, ["b.jpg"], seed=1)
    doomed = [str(path) for path in segment_files(store)]
    real_stat, real_fstat = segments.os.stat, segments.os.fstat

    def deleting(stat):
        def checked(target, *args, **kwargs):
            result = stat(target, *args, **kwargs)
            name = os.readlink(f"/proc/self/fd/{target}") if isinstance(target, int) else str(target)
            if name in doomed:  # the writer's merge removes the segment just checked
                os.unlink(name)
            return result
        return checked

    monkeypatch.setattr(segments.os, "stat", deleting(real_stat))
    monkeypatch.setattr(segments.os, "fstat", deleting(real_fstat))
    with EmbeddingStore.open(store.path) as reader:
        monkeypatch.undo()
        assert not any(os.path.lexists(name) for name in doomed) and len(doomed) == 2
        assert reader.image_paths() == ["a.jpg", "b.jpg"]


def test_a_lost_text_file_is_named_and_dropped_on_request(store, capsys):
    add(store, ["a.jpg"])
    store.add_texts(["of a"], unit_rows(1), image_index=[0])
    store.close()
    texts_file = next(segments_folder(store.path).glob("texts-*.h5"))
    texts_file.unlink()
    with pytest.raises(StoreError, match=rf"Text file .*{texts_file.name} is missing or unreadable"):
        EmbeddingStore.open(store.path)
    assert main(["compact", "--store", str(store.path), "--drop-missing"]) == 0
    assert texts_file.name in capsys.readouterr().out
    reader = EmbeddingStore.open(store.path)
    assert reader.image_paths() == ["a.jpg"] and reader.texts() == []
