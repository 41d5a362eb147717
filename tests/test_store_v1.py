"""Format-1 stores (tests/fixtures/v1_store.h5, written by the v1 code) open as they are and are upgraded
atomically by the first write; crafted store files give clear errors (issue 18 item 5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from clipwidgets.cli import main
from clipwidgets.errors import InvalidInputError, StoreError
from clipwidgets.store import EmbeddingStore, SkippedFile, read_model_meta, segments_folder
from clipwidgets.store import files as files_module

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v1_store.h5"
PATHS = ["photo_00.jpg", "photo_01.jpg", "photo_02.jpg", "photo_04.jpg", "photo_05.jpg", "sub/dir/été.jpg"]


@pytest.fixture
def v1(tmp_path):
    path = tmp_path / "v1.h5"
    shutil.copy(FIXTURE, path)
    return path


def raw_v1(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {"vectors": f["images/embeddings"][()], "texts": f["texts/embeddings"][()]}


def check_contents(store: EmbeddingStore, raw: dict, *, skipped: tuple = ()) -> None:
    assert store.image_paths() == PATHS and store.num_images == 6
    assert np.array_equal(store.image_embeddings(), raw["vectors"])
    assert store.texts() == ["a red photo", "a blue photo", "a query"]
    assert store.text_image_index().tolist() == [0, 5, -1]
    assert store.text_sources() == ["flickr8k#0", "flickr8k#0", ""]
    assert np.array_equal(store.text_embeddings(), raw["texts"])
    assert store.captions(5) == ["a blue photo"] and store.index_of("sub/dir/été.jpg") == 5
    assert store.skipped() == [SkippedFile("broken.jpg", "truncated JPEG", 12, 10**18), *skipped]
    assert store.subsets()["test"].tolist() == [1, 5]
    assert store.image_meta()["size"].tolist() == [1000, 1001, 1002, 1004, 1005, 1006]
    assert store.model_meta["name"] == "tiny" and store.dim == 64


def test_a_v1_store_opens_as_it_is(v1):
    before = v1.read_bytes()
    store = EmbeddingStore.open(v1)
    assert store.format_version == 1 and store.info()["format_version"] == 1
    check_contents(store, raw_v1(v1))
    assert len(store.vector_blocks()) == 1 and store.vector_blocks()[0].rows.tolist() == list(range(6))
    assert store.refresh() is False
    EmbeddingStore.open(v1, "a").close()  # opening to write changes nothing until a commit
    assert v1.read_bytes() == before and not segments_folder(v1).exists()


def test_the_first_write_upgrades_a_v1_store(v1):
    raw = raw_v1(v1)
    reader = EmbeddingStore.open(v1)
    with EmbeddingStore.open(v1, "a") as store:
        store.add_skipped([SkippedFile("other.jpg", "cannot decode", 1, 2)])
        assert store.format_version == 2
    with h5py.File(v1, "r") as f:
        assert f.attrs["format_version"] == 2 and "paths" not in f["images"]
    upgraded = EmbeddingStore.open(v1)
    assert upgraded.format_version == 2 and len(upgraded.vector_blocks()) == 1
    check_contents(upgraded, raw, skipped=(SkippedFile("other.jpg", "cannot decode", 1, 2),))
    assert reader.refresh() is True and reader.format_version == 2


def test_an_interrupted_upgrade_leaves_the_v1_file(v1, monkeypatch):
    before = v1.read_bytes()

    def killed(path, *args):
        path.write_bytes(b"half a manifest")
        raise KeyboardInterrupt

    monkeypatch.setattr(files_module, "write_manifest", killed)
    with EmbeddingStore.open(v1, "a") as store, pytest.raises(KeyboardInterrupt):
        store.remove(["photo_00.jpg"])
    assert v1.read_bytes() == before
    assert [p.name for p in segments_folder(v1).iterdir()] == []  # the new segment was removed
    monkeypatch.undo()
    check_contents(EmbeddingStore.open(v1), raw_v1(v1))


# ----- crafted files (issue 18 item 5) -----

@pytest.mark.parametrize("meta, problem", [
    ({"name": "tiny", "pretrained": "random-seed-0"}, "lacks embed_dim"),
    ({"embed_dim": 64, "pretrained": "random-seed-0"}, "lacks name"),
    (["tiny", "random-seed-0", 64], "must be a dict"),
    ({"name": "tiny", "pretrained": "random-seed-0", "embed_dim": "64"}, "positive integer"),
    ({"name": "tiny", "pretrained": "random-seed-0", "embed_dim": 64.5}, "positive integer"),
])
def test_bad_model_metadata_is_a_store_error_everywhere(v1, tmp_path, capsys, meta, problem):
    with h5py.File(v1, "a") as f:
        f.attrs["model_meta"] = json.dumps(meta)
    for open_it in (EmbeddingStore.open, read_model_meta):
        with pytest.raises(StoreError, match=rf"{v1.name} has no usable model metadata.*{problem}"):
            open_it(v1)
    (tmp_path / "images").mkdir()
    for argv in (["info", "--store", str(v1)], ["search", "a dog", "--store", str(v1), "--model", "tiny"],
                 ["index", str(tmp_path / "images"), "--store", str(v1), "--model", "tiny"]):
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert "no usable model metadata" in error and "Traceback" not in error


def test_integer_paths_and_nan_rows_are_refused(v1, tmp_path, capsys):
    ints = tmp_path / "ints.h5"
    shutil.copy(v1, ints)
    with h5py.File(ints, "a") as f:
        del f["images/paths"]
        f["images/paths"] = np.arange(6)
    with pytest.raises(StoreError, match=r"ints.h5 is damaged.*images/paths holds int64, not strings"):
        EmbeddingStore.open(ints)
    assert main(["info", "--store", str(ints)]) == 2 and "not strings" in capsys.readouterr().err
    with h5py.File(v1, "a") as f:
        f["images/embeddings"][3, 5] = np.nan
    with pytest.raises(StoreError, match=r"v1.h5 is damaged: images/embeddings row 3 holds NaN or inf"):
        EmbeddingStore.open(v1)


def test_crafted_nan_segment_is_refused_when_merged(tmp_path):
    (tmp_path / "images").mkdir()
    with EmbeddingStore.create(tmp_path / "s.h5", read_model_meta(FIXTURE), tmp_path / "images") as store:
        rows = np.full((2, 64), 0.125, np.float32)
        store.add_images(["a.jpg", "b.jpg"], rows, sizes=[1, 1], mtimes_ns=[1, 1], widths=[1, 1],
                         heights=[1, 1])
        segment = next(segments_folder(store.path).glob("seg-*.h5"))
        with h5py.File(segment, "r") as f:
            offset = f["images/embeddings"].id.get_offset()
        with open(segment, "r+b") as raw:  # NaN in place (same size: the manifest still matches)
            raw.seek(offset + 2 * 64 + 4)
            raw.write(np.array([np.nan], np.float16).tobytes())
        store.add_images(["c.jpg"], rows[:1], sizes=[1], mtimes_ns=[1], widths=[1], heights=[1])
    with pytest.raises(StoreError, match=rf"Segment {segment.name} holds NaN or inf"), \
            EmbeddingStore.open(tmp_path / "s.h5", "a") as store:
        store.compact(full=True)


def test_abspath_rechecks_stored_paths(v1, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    for bad in ("../secret.jpg", "/etc/passwd", "sub/../../secret.jpg", "C:/x.jpg"):
        with h5py.File(v1, "a") as f:
            f.attrs["image_root"] = str(root)
            del f["images/paths"]
            f["images/paths"] = np.array([bad.encode(), *[p.encode() for p in PATHS[1:]]],
                                         dtype=h5py.string_dtype("utf-8"))
        store = EmbeddingStore.open(v1)
        with pytest.raises(InvalidInputError, match="not a plain path inside its image root"):
            store.abspath(0)
        assert store.abspath(1) == root / "photo_01.jpg"


def test_clipwidgets_index_upgrades_a_v1_store(v1, tmp_path, capsys):
    from clipwidgets.synthetic import make_photo

    root = tmp_path / "images"
    root.mkdir()
    make_photo(1).save(root / "new.jpg")
    with h5py.File(v1, "a") as f:
        f.attrs["image_root"] = str(root)
    raw = raw_v1(v1)
    assert main(["index", str(root), "--store", str(v1), "--model", "tiny", "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["indexed"] == 1
    store = EmbeddingStore.open(v1)
    assert store.format_version == 2 and store.image_paths() == [*PATHS, "new.jpg"]
    assert np.array_equal(store.image_embeddings()[:6], raw["vectors"])
    assert store.captions(5) == ["a blue photo"]
