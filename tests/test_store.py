"""EmbeddingStore: schema, round trips, diff, validation, bad files, failed commits, npy import, CLI."""

from __future__ import annotations

import errno
import json
import os

import h5py
import numpy as np
import pytest

from clipwidgets.cli import main
from clipwidgets.errors import InvalidInputError, ModelMismatchError, StoreError
from clipwidgets.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    EmbeddingStore,
    SkippedFile,
    StoreDiff,
    read_model_meta,
)
from clipwidgets.store import files as files_module

DIM = 16
META = {"name": "tiny", "pretrained": "random-seed-0", "embed_dim": DIM,
        "preprocess": {"image_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}}
OTHER_META = {"name": "ViT-B-32-quickgelu", "pretrained": "openai", "embed_dim": 512}


def unit_rows(count: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def add(store: EmbeddingStore, paths: list[str], seed: int = 0, *, size: int = 100) -> np.ndarray:
    rows = unit_rows(len(paths), seed)
    store.add_images(paths, rows, sizes=[size] * len(paths), mtimes_ns=list(range(len(paths))),
                     widths=[640] * len(paths), heights=[480] * len(paths))
    return rows


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    return folder


@pytest.fixture
def store(tmp_path, root):
    with EmbeddingStore.create(tmp_path / "photos.h5", META, root) as opened:
        yield opened


def file_bytes(path) -> bytes:
    return open(path, "rb").read()


def leftovers(store: EmbeddingStore) -> list[str]:
    """Temp files, and segment files the manifest does not list."""
    with h5py.File(store.path, "r") as f:
        listed = set(f["segments/name"].asstr()[()].tolist())
    folder = store.path.with_name(store.path.name + ".d")
    temps = [p.name for p in store.path.parent.iterdir() if ".tmp-" in p.name]
    return sorted(temps + [p.name for p in folder.iterdir()
                           if p.name.startswith((".", "seg-")) and p.name not in listed])


# ----- schema -----

def test_manifest_attributes_and_segment_files(store, root):
    add(store, ["a.jpg", "sub/b.jpg"])
    store.add_texts(["a red car"], unit_rows(1, 7), image_index=[0], sources=["flickr8k#0"])
    with h5py.File(store.path, "r") as f:
        attrs = dict(f.attrs)
        assert attrs["format_name"] == FORMAT_NAME and attrs["format_version"] == FORMAT_VERSION == 2
        assert attrs["model_name"] == "tiny" and attrs["model_pretrained"] == "random-seed-0"
        assert attrs["embed_dim"] == DIM and bool(attrs["normalized"]) is True
        assert json.loads(attrs["model_meta"]) == META
        assert attrs["image_root"] == str(root) and attrs["image_root_relative"] == "images"
        assert attrs["dtype"] == "float16" and attrs["clipwidgets_version"]
        assert attrs["created"] <= attrs["updated"] and attrs["segments_folder"] == "photos.h5.d"
        assert f["images/embeddings"].is_virtual and f["images/embeddings"].dtype == np.float16
        names = f["segments/name"].asstr()[()].tolist()
    folder = store.path.with_name("photos.h5.d")
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("seg-")) == sorted(names)
    for name in names:  # segments: contiguous, uncompressed datasets (memory-mappable)
        with h5py.File(folder / name, "r") as f:
            datasets = [f[key] for key in ("images/embeddings", "images/id", "images/path_bytes",
                                           "images/path_offsets", "index/hash_sorted", "index/hash_order")]
            assert all(d.chunks is None and d.compression is None for d in datasets)


def test_float32_option_and_unknown_dtype(tmp_path, root):
    with EmbeddingStore.create(tmp_path / "f32.h5", META, root, dtype="float32") as store:
        rows = add(store, ["a.jpg"])
    with h5py.File(tmp_path / "f32.h5", "r") as f:
        assert f["images/embeddings"].dtype == np.float32
    assert np.array_equal(EmbeddingStore.open(tmp_path / "f32.h5").image_embeddings(), rows)
    with pytest.raises(InvalidInputError, match="bfloat16"):
        EmbeddingStore.create(tmp_path / "x.h5", META, root, dtype="bfloat16")


# ----- round trips -----

def test_round_trip_images_texts_skipped_subsets(store, root):
    rows = add(store, ["a.jpg", "b.jpg", "c/d.png"])
    with store.batch():
        store.add_texts(["cap a", "query", "cap d 1", "cap d 2"], unit_rows(4, 1),
                        image_index=[0, -1, 2, 2], sources=["f#0", "", "f#0", "f#1"])
        store.add_skipped([SkippedFile("bad.jpg", "cannot decode", 5, 6)])
        store.set_subset("train", ["a.jpg", "c/d.png"])
    reader = EmbeddingStore.open(store.path)
    assert reader.mode == "r" and reader.format_version == FORMAT_VERSION
    assert reader.image_paths() == ["a.jpg", "b.jpg", "c/d.png"] and len(reader) == 3
    embeddings = reader.image_embeddings()
    assert embeddings.dtype == np.float16 and embeddings.flags.c_contiguous
    assert reader.image_embeddings() is embeddings
    np.testing.assert_allclose(embeddings, rows, atol=1e-3)
    assert reader.image_meta()["width"].tolist() == [640] * 3
    assert reader.image_meta()["mtime_ns"].tolist() == [0, 1, 2]
    assert reader.texts() == ["cap a", "query", "cap d 1", "cap d 2"]
    assert reader.text_image_index().tolist() == [0, -1, 2, 2]
    assert reader.text_sources() == ["f#0", "", "f#0", "f#1"]
    assert reader.captions(2) == ["cap d 1", "cap d 2"] and reader.captions(1) == []
    assert reader.skipped() == [SkippedFile("bad.jpg", "cannot decode", 5, 6)]
    assert {k: v.tolist() for k, v in reader.subsets().items()} == {"train": [0, 2]}
    assert reader.index_of("c/d.png") == 2 and reader.abspath(1) == root / "b.jpg"
    assert reader.model_meta == META and reader.dim == DIM and reader.image_root == root
    with pytest.raises(InvalidInputError, match="nope.jpg"):
        reader.index_of("nope.jpg")
    with pytest.raises(StoreError, match="read-only"):
        add(reader, ["e.jpg"])


def test_adding_an_existing_path_replaces_its_row(store):
    add(store, ["a.jpg", "b.jpg"])
    store.add_texts(["cap b"], unit_rows(1, 3), image_index=[1])
    store.add_skipped([SkippedFile("c.jpg", "truncated", 1, 1)])
    new = unit_rows(2, 9)
    store.add_images(["b.jpg", "c.jpg"], new, sizes=[7, 8], mtimes_ns=[70, 80], widths=[1, 2], heights=[3, 4])
    reader = EmbeddingStore.open(store.path)
    assert reader.image_paths() == ["a.jpg", "b.jpg", "c.jpg"]
    np.testing.assert_allclose(reader.image_embeddings()[1:], new, atol=1e-3)
    assert reader.image_meta()["size"].tolist() == [100, 7, 8]
    assert reader.captions(1) == ["cap b"]
    assert reader.skipped() == []  # c.jpg is embedded now


def test_remove_compacts_rows_and_renumbers_texts(store):
    rows = add(store, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    store.add_texts(["a1", "b1", "c1", "free", "d1", "b2"], unit_rows(6, 1),
                    image_index=[0, 1, 2, -1, 3, 1])
    store.add_skipped([SkippedFile("x.jpg", "bad", 1, 1)])
    store.set_subset("val", ["b.jpg", "d.jpg"])
    assert store.remove(["b.jpg", "x.jpg", "not-there.jpg"]) == 1
    reader = EmbeddingStore.open(store.path)
    assert reader.image_paths() == ["a.jpg", "c.jpg", "d.jpg"]
    np.testing.assert_allclose(reader.image_embeddings(), rows[[0, 2, 3]], atol=1e-3)
    assert reader.texts() == ["a1", "c1", "free", "d1"]
    assert reader.text_image_index().tolist() == [0, 1, -1, 2]
    assert reader.captions(2) == ["d1"]
    assert reader.skipped() == []
    assert reader.subsets()["val"].tolist() == [2]
    assert reader.info()["subsets"] == {"val": 1}


def test_batch_commits_once_and_discards_everything_when_it_raises(store):
    add(store, ["a.jpg"])
    before = file_bytes(store.path)
    with pytest.raises(RuntimeError), store.batch():
        add(store, ["b.jpg"])
        assert store.num_images == 2  # the writer sees its pending edits
        raise RuntimeError("stop")
    assert store.image_paths() == ["a.jpg"] and file_bytes(store.path) == before
    with store.batch():
        add(store, ["b.jpg"])
        assert EmbeddingStore.open(store.path).num_images == 1  # not committed yet
        assert store.index_of("b.jpg") == 1
        store.remove(["a.jpg"])
        add(store, ["c.jpg"], seed=1)
        assert (store.index_of("b.jpg"), store.index_of("c.jpg")) == (0, 1)
    assert EmbeddingStore.open(store.path).image_paths() == ["b.jpg", "c.jpg"]


def test_info_summary(store):
    add(store, ["a.jpg", "b.jpg"])
    info = store.info()
    assert info["images"] == 2 and info["texts"] == 0 and info["skipped"] == 0
    assert info["model"] == "tiny/random-seed-0" and info["dim"] == DIM and info["dtype"] == "float16"
    assert info["format_name"] == FORMAT_NAME and info["format_version"] == FORMAT_VERSION
    folder = store.path.with_name("photos.h5.d")
    assert info["segments"] == 1 and info["segments_folder"] == str(folder)
    assert info["size_bytes"] == store.path.stat().st_size + sum(
        p.stat().st_size for p in folder.iterdir() if p.name.startswith("seg-"))
    json.dumps(info)


def test_read_model_meta_reads_attributes_only(store, tmp_path):
    add(store, ["a.jpg"])
    assert read_model_meta(store.path) == store.model_meta
    foreign = tmp_path / "foreign.h5"
    foreign.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(StoreError, match="not a readable HDF5 file"):
        read_model_meta(foreign)


def test_open_or_create_checks_model_and_image_root(tmp_path, root):
    path = tmp_path / "s.h5"
    with EmbeddingStore.open_or_create(path, META, root) as store:
        add(store, ["a.jpg"])
    with EmbeddingStore.open_or_create(path, META, root) as store:
        assert store.num_images == 1
    with pytest.raises(ModelMismatchError, match="tiny/random-seed-0.*ViT-B-32-quickgelu/openai"):
        EmbeddingStore.open_or_create(path, OTHER_META, root)
    other_root = tmp_path / "other"
    other_root.mkdir()
    with pytest.raises(StoreError, match="other"):
        EmbeddingStore.open_or_create(path, META, other_root)
    EmbeddingStore.open(path, "a").close()  # the refused opens released the writer lock


def test_store_and_images_moved_together(tmp_path, root):
    with EmbeddingStore.create(tmp_path / "s.h5", META, root) as store:
        add(store, ["a.jpg"])
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "s.h5").rename(moved / "s.h5")
    (tmp_path / "s.h5.d").rename(moved / "s.h5.d")  # a store is its file and its segment folder
    root.rename(moved / "images")
    assert EmbeddingStore.open(moved / "s.h5").abspath(0) == moved / "images" / "a.jpg"


# ----- diff -----

def test_diff_against_scan_and_folder(store, root):
    store.add_images(["same.jpg", "edited.jpg", "gone.jpg"], unit_rows(3),
                     sizes=[1, 2, 3], mtimes_ns=[10, 20, 30], widths=[1] * 3, heights=[1] * 3)
    store.add_skipped([SkippedFile("bad.jpg", "truncated", 5, 50), SkippedFile("fixed.jpg", "x", 6, 60),
                       SkippedFile("deleted.jpg", "x", 7, 70)])
    scan = {"same.jpg": (1, 10), "edited.jpg": (2, 21), "new.jpg": (4, 40), "bad.jpg": (5, 50),
            "fixed.jpg": (9, 61)}
    assert store.diff(scan) == StoreDiff(new=["fixed.jpg", "new.jpg"], changed=["edited.jpg"],
                                         removed=["deleted.jpg", "gone.jpg"], unchanged=["same.jpg"],
                                         skipped_unchanged=["bad.jpg"])
    (root / "sub").mkdir()
    for name in ("same.jpg", "sub/pic.PNG", "notes.txt", ".hidden.jpg"):
        (root / name).write_bytes(b"x")
    stat = (root / "same.jpg").stat()
    store.add_images(["same.jpg"], unit_rows(1), sizes=[stat.st_size], mtimes_ns=[stat.st_mtime_ns],
                     widths=[1], heights=[1])
    folder_diff = store.diff(root)
    assert folder_diff.unchanged == ["same.jpg"] and folder_diff.new == ["sub/pic.PNG"]
    assert folder_diff.removed == ["bad.jpg", "deleted.jpg", "edited.jpg", "fixed.jpg", "gone.jpg"]


# ----- bad input -----

def test_model_and_dimension_mismatch_name_both_models(store):
    with pytest.raises(ModelMismatchError) as caught:
        store.check_model(OTHER_META)
    message = str(caught.value)
    assert "tiny/random-seed-0 (16-d)" in message and "ViT-B-32-quickgelu/openai (512-d)" in message
    assert "photos.h5" in message
    with pytest.raises(ModelMismatchError, match="tiny/random-seed-0"):
        store.check_model({**META, "pretrained": "random-seed-1"})
    with pytest.raises(ModelMismatchError, match=r"16-d.*tiny/random-seed-0.*512-d"):
        store.add_images(["a.jpg"], unit_rows(1, dim=512), sizes=[1], mtimes_ns=[1], widths=[1], heights=[1])
    with pytest.raises(ModelMismatchError, match="8-d"):
        store.add_texts(["q"], unit_rows(1, dim=8))
    store.check_model(dict(META))
    assert store.num_images == 0


@pytest.mark.parametrize("bad_value, problem", [(np.nan, "NaN or inf"), (np.inf, "NaN or inf"),
                                                (None, "norm 2")])
def test_bad_vectors_are_refused_naming_the_row(store, bad_value, problem):
    rows = unit_rows(3)
    if bad_value is None:
        rows[1] *= 2
    else:
        rows[1, 4] = bad_value
    before = file_bytes(store.path)
    with pytest.raises(InvalidInputError, match=rf"'b.jpg' \(row 1\).*{problem}"):
        store.add_images(["a.jpg", "b.jpg", "c.jpg"], rows, sizes=[1] * 3, mtimes_ns=[1] * 3,
                         widths=[1] * 3, heights=[1] * 3)
    with pytest.raises(InvalidInputError, match=r"text 1 \('second'\) \(row 1\)"):
        store.add_texts(["first", "second", "third"], rows)
    assert store.num_images == 0 and store.num_texts == 0 and file_bytes(store.path) == before


def test_bad_paths_are_refused_naming_the_path(store, root, tmp_path):
    cases = [("../outside.jpg", "outside the image root"), (str(tmp_path / "elsewhere.jpg"), "outside"),
             ("sub/../../x.jpg", "outside"), ("", "Invalid image path")]
    for path, problem in cases:
        with pytest.raises(InvalidInputError, match=problem) as caught:
            add(store, [path])
        assert path in str(caught.value)
    with pytest.raises(InvalidInputError, match="Duplicate image path 'a.jpg'"):
        add(store, ["a.jpg", "b.jpg", "./a.jpg"])
    with pytest.raises(InvalidInputError, match="list of paths"):
        add(store, "a.jpg")
    with pytest.raises(InvalidInputError, match="3 paths but 2 sizes"):
        store.add_images(["a", "b", "c"], unit_rows(3), sizes=[1, 2], mtimes_ns=[1] * 3, widths=[1] * 3,
                         heights=[1] * 3)
    (tmp_path / "link").symlink_to(root)
    add(store, [str(root / "sub" / "in.jpg"), "./x/y.jpg", str(tmp_path / "link" / "z.jpg")])
    assert store.image_paths() == ["sub/in.jpg", "x/y.jpg", "z.jpg"]  # absolute inside the root is fine
    with pytest.raises(InvalidInputError, match="links to image 5"):
        store.add_texts(["t"], unit_rows(1), image_index=[5])
    with pytest.raises(InvalidInputError, match="'nope.jpg' is not in store"):
        store.set_subset("train", ["sub/in.jpg", "nope.jpg"])
    with pytest.raises(InvalidInputError, match="no '/'"):
        store.set_subset("a/b", ["sub/in.jpg"])


def test_not_a_store_random_bytes_truncated_and_newer_files(tmp_path, store):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.arange(3)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    add(store, ["a.jpg", "b.jpg"])
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(file_bytes(store.path)[: store.path.stat().st_size // 2])
    newer = tmp_path / "newer.h5"
    newer.write_bytes(file_bytes(store.path))
    with h5py.File(newer, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    cases = [(foreign, "not a clipwidgets store"), (garbage, "not a readable HDF5 file"),
             (truncated, "truncated, corrupt"), (newer, f"format version {FORMAT_VERSION + 1}, newer")]
    for path, problem in cases:
        before = file_bytes(path)
        for mode in ("r", "a"):
            with pytest.raises(StoreError, match=problem) as caught:
                EmbeddingStore.open(path, mode)
            assert str(path) in str(caught.value)
        with pytest.raises(StoreError, match="already exists"):
            EmbeddingStore.create(path, META, tmp_path)
        assert file_bytes(path) == before
        assert not path.with_name(path.name + ".lock").exists()
    with pytest.raises(StoreError, match="missing.h5 does not exist"):
        EmbeddingStore.open(tmp_path / "missing.h5")
    with pytest.raises(StoreError, match="is a folder"):
        EmbeddingStore.open(tmp_path)


def test_store_truncated_anywhere_is_refused(tmp_path, store):
    add(store, ["a.jpg", "b.jpg", "c.jpg"])
    store.add_texts(["cap"], unit_rows(1), image_index=[0])
    data = file_bytes(store.path)
    cut_file = tmp_path / "cut.h5"
    for cut in range(0, len(data), len(data) // 25):
        cut_file.write_bytes(data[:cut])
        with pytest.raises(StoreError, match="cut.h5"):
            EmbeddingStore.open(cut_file)


def copy_store(store: EmbeddingStore, target) -> None:
    """Copy a store's manifest and segment folder (as a user moving a store would)."""
    import shutil

    shutil.copy(store.path, target)
    shutil.copytree(store.path.with_name(store.path.name + ".d"), target.with_name(target.name + ".d"))


def test_damaged_store_is_refused(tmp_path, store):
    add(store, ["a.jpg", "b.jpg"])
    store.add_texts(["t"], unit_rows(1), image_index=[1])
    damaged = tmp_path / "damaged.h5"
    copy_store(store, damaged)
    with h5py.File(damaged, "a") as f:
        f["segments/rows"][0] = 5
    with pytest.raises(StoreError, match=r"damaged.h5.d/seg-.*not the segment the manifest lists"):
        EmbeddingStore.open(damaged)
    dangling = tmp_path / "dangling.h5"
    copy_store(store, dangling)
    texts_file = next((tmp_path / "dangling.h5.d").glob("texts-*.h5"))
    with h5py.File(texts_file, "a") as f:
        f["texts/image_id"][0] = 7
    with pytest.raises(StoreError, match="dangling.h5 is damaged: texts linked to images that do not exist"):
        EmbeddingStore.open(dangling, "a")
    with h5py.File(damaged, "a") as f:
        del f["skipped"]
    with pytest.raises(StoreError, match="damaged.*KeyError"):
        EmbeddingStore.open(damaged)


@pytest.mark.parametrize("failure", ["write", "replace"])
def test_failed_commit_keeps_the_previous_file(store, monkeypatch, failure):
    add(store, ["a.jpg"])
    before = file_bytes(store.path)

    def disk_full_while_writing(path, *args, **kwargs):
        path.write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    if failure == "write":
        monkeypatch.setattr(files_module, "write_segment", disk_full_while_writing)
    else:
        monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(StoreError, match=r"photos.h5: the disk is full.*\(1 images\)"):
        add(store, ["b.jpg"])
    assert file_bytes(store.path) == before and store.image_paths() == ["a.jpg"]
    assert leftovers(store) == []
    monkeypatch.undo()
    add(store, ["c.jpg"])  # the writer is still usable after the failure
    assert EmbeddingStore.open(store.path).image_paths() == ["a.jpg", "c.jpg"]


def test_interrupted_commit_leaves_no_temp_file(store, monkeypatch):
    add(store, ["a.jpg"])
    before = file_bytes(store.path)

    def interrupted(path, *args):
        path.write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(files_module, "write_manifest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        add(store, ["b.jpg"])
    assert file_bytes(store.path) == before and store.image_paths() == ["a.jpg"]
    assert leftovers(store) == []


def test_unwritable_location_is_refused(tmp_path, root):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="a-file"):
        EmbeddingStore.create(blocker / "s.h5", META, root)
    assert blocker.read_text() == "not a folder"


def test_second_writer_is_refused_while_the_first_holds_the_lock(store):
    with pytest.raises(StoreError, match="Another process is writing to .*photos.h5"):
        EmbeddingStore.open(store.path, "a")
    assert EmbeddingStore.open(store.path, "r").num_images == 0  # readers are never blocked
    store.close()
    with pytest.raises(StoreError, match="closed"):
        add(store, ["a.jpg"])
    EmbeddingStore.open(store.path, "a").close()


def test_create_refuses_existing_path_and_writer_removes_stale_temp_files(store):
    with pytest.raises(StoreError, match="already exists"):
        EmbeddingStore.create(store.path, META, store.image_root)
    store.close()
    stale = store.path.with_name(f".{store.path.name}.tmp-12345-deadbeef")
    stale.write_bytes(b"half a file")
    unrelated = store.path.with_name(f".{store.path.name}.tmp-notours")
    unrelated.write_bytes(b"keep")
    EmbeddingStore.open(store.path, "r").close()
    assert stale.exists()  # readers never delete anything
    EmbeddingStore.open(store.path, "a").close()
    assert not stale.exists() and unrelated.exists()
    killed_create = store.path.with_name(".new.h5.tmp-999-0123abcd")
    killed_create.write_bytes(b"half a file")
    EmbeddingStore.create(store.path.with_name("new.h5"), META, store.image_root).close()
    assert not killed_create.exists()


# ----- CLI -----

def test_cli_info_json_and_text(store, capsys):
    add(store, ["a.jpg"])
    store.add_texts(["q"], unit_rows(1))
    assert main(["info", "--store", str(store.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["images"], info["texts"], info["skipped"]) == (1, 1, 0)
    assert info["model"] == "tiny/random-seed-0" and info["format_version"] == FORMAT_VERSION
    assert main(["info", "--store", str(store.path)]) == 0
    assert "images: 1" in capsys.readouterr().out


def test_cli_info_on_a_foreign_file(tmp_path, capsys):
    (tmp_path / "x.h5").write_bytes(b"hello")
    assert main(["info", "--store", str(tmp_path / "x.h5")]) == 2
    assert "x.h5 is not a readable HDF5 file" in capsys.readouterr().err
