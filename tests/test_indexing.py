"""index_images and `clipwidgets index`: incremental runs, prune, resume after SIGKILL, Ctrl-C, bad files."""

from __future__ import annotations

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
import torch
from test_images import write_bad_images, write_good_awkward_images

from clipwidgets import images, indexing
from clipwidgets.cli import main
from clipwidgets.decode_workers import CRASHED
from clipwidgets.errors import InvalidInputError, ModelMismatchError
from clipwidgets.images import ModelInputSpec, scan_images
from clipwidgets.indexing import MAX_BATCH_SIZE, index_images
from clipwidgets.store import EmbeddingStore, SkippedFile
from clipwidgets.synthetic import make_photo, make_photos

REPO = Path(__file__).resolve().parents[1]
REPORT_KEYS = {"indexed", "unchanged", "skipped", "removed", "skipped_files", "seconds", "images_per_second"}


class CountingEncoder:
    """The real tiny encoder, counting the images it encodes."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.encoded = 0

    def encode_pixels(self, pixels):
        self.encoded += len(pixels)
        return self.encoder.encode_pixels(pixels)

    def __getattr__(self, name):
        return getattr(self.encoder, name)


@pytest.fixture
def collection(tmp_path):
    """Photos, awkward-but-good images and bad files, plus things discovery must ignore.

    Returns (folder, number of good images, {relative path of each bad file: its reason}).
    """
    root = tmp_path / "images"
    make_photos(root, 6)
    good = write_good_awkward_images(root / "odd")
    bad = write_bad_images(root / "bad")
    (root / ".hidden.jpg").write_bytes(b"hidden")
    (root / "._photo_00000.jpg").write_bytes(b"AppleDouble")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "photo.jpg").write_bytes(b"resource fork")
    (root / "odd" / "loop").symlink_to(root, target_is_directory=True)
    return root, 6 + len(good), {f"bad/{name}": reason for name, reason in bad.items()}


def _skipped(report) -> dict[str, str]:
    return {entry["path"]: entry["reason"] for entry in report.skipped_files}


def test_first_run_indexes_good_files_and_records_bad_ones(collection, tmp_path, tiny_encoder):
    root, good, bad = collection
    store_path = tmp_path / "store.h5"
    report = index_images(root, store_path, tiny_encoder, batch_size=4, workers=1, progress=False)
    assert (report.indexed, report.unchanged, report.skipped, report.removed) == (good, 0, len(bad), 0)
    assert _skipped(report) == bad
    with EmbeddingStore.open(store_path) as store:
        assert store.num_images == good
        assert sorted(store.image_paths()) == sorted(set(scan_images(root)) - set(bad))
        assert {record.path: record.reason for record in store.skipped()} == bad
        assert store.model_meta["name"] == "tiny"
        row = store.index_of("odd/rotated.jpg")
        meta = store.image_meta()
        assert (meta["width"][row], meta["height"][row]) == (40, 60)  # after EXIF rotation
        embeddings = store.image_embeddings().astype(np.float32)
        assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-2)


def test_even_a_run_of_a_few_files_decodes_in_worker_processes(tmp_path, tiny_encoder, monkeypatch):
    """A decoder that crashes or hangs must take down a worker, never the indexer (or a notebook's kernel)."""
    make_photos(tmp_path / "few", 3)
    decoded_here = []
    load_model_input = images.load_model_input

    def spy(path, spec):
        decoded_here.append(path)
        return load_model_input(path, spec)

    monkeypatch.setattr(images, "load_model_input", spy)  # workers import their own, unpatched copy
    report = index_images(tmp_path / "few", tmp_path / "pool.h5", tiny_encoder, batch_size=32, progress=False)
    assert report.indexed == 3
    assert decoded_here == []
    index_images(tmp_path / "few", tmp_path / "inline.h5", tiny_encoder, workers=0, progress=False)
    assert len(decoded_here) == 3  # the spy sees decoding in this process


def test_workers_and_in_process_decoding_give_the_same_embeddings(photo_dir, tmp_path, tiny_encoder):
    index_images(photo_dir, tmp_path / "pool.h5", tiny_encoder, batch_size=4, workers=2, progress=False)
    index_images(photo_dir, tmp_path / "inline.h5", tiny_encoder, batch_size=4, workers=0, progress=False)
    with EmbeddingStore.open(tmp_path / "pool.h5") as pool, \
            EmbeddingStore.open(tmp_path / "inline.h5") as inline:
        assert pool.image_paths() == inline.image_paths()
        np.testing.assert_array_equal(pool.image_embeddings(), inline.image_embeddings())


def test_worker_preprocessing_gives_the_encoders_embeddings(photo_dir, tmp_path, tiny_encoder):
    index_images(photo_dir, tmp_path / "store.h5", tiny_encoder, workers=0, progress=False)
    paths = sorted(photo_dir.iterdir())[:3]
    # the model's own transform on the same JPEG draft the workers decode (1/8 scale for a 32-px input)
    from clipwidgets.images import load_image

    expected = tiny_encoder.encode_images([load_image(path, draft_size=(32, 32)) for path in paths])
    with EmbeddingStore.open(tmp_path / "store.h5") as store:
        rows = [store.index_of(path.name) for path in paths]
        stored = store.image_embeddings()[rows].astype(np.float32)
    assert np.all(np.sum(stored * expected, axis=1) > 0.999)


class LongestSideEncoder(CountingEncoder):
    """The tiny model with open_clip's "longest" resize mode, which the workers do not reproduce."""

    def __init__(self, encoder) -> None:
        import open_clip

        super().__init__(encoder)
        self.meta = {**encoder.meta, "preprocess": {**encoder.meta["preprocess"], "resize_mode": "longest"}}
        self.preprocess = open_clip.image_transform(32, is_train=False, resize_mode="longest")


def test_other_resize_modes_use_the_models_own_transform(photo_dir, tmp_path, tiny_encoder):
    from clipwidgets.images import load_image

    encoder = LongestSideEncoder(tiny_encoder)
    assert not ModelInputSpec.from_meta(encoder.meta["preprocess"]).supported
    index_images(photo_dir, tmp_path / "store.h5", encoder, workers=1, batch_size=4, progress=False)
    paths = sorted(photo_dir.iterdir())[:3]
    expected = tiny_encoder.encode_pixels(
        torch.stack([encoder.preprocess(load_image(path, draft_size=(32, 32))) for path in paths]))
    with EmbeddingStore.open(tmp_path / "store.h5") as store:
        stored = store.image_embeddings()[[store.index_of(path.name) for path in paths]].astype(np.float32)
    assert np.all(np.sum(stored * expected, axis=1) > 0.999)


def test_batch_normalisation_is_the_encoders_exactly(tiny_encoder):
    from PIL import Image

    from clipwidgets.indexing import Normaliser

    spec = ModelInputSpec.from_meta(tiny_encoder.meta["preprocess"])
    pixels = [np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8) for seed in range(3)]
    batch = Normaliser(tiny_encoder, spec)(pixels)
    expected = np.stack([tiny_encoder.preprocess(Image.fromarray(array)).numpy() for array in pixels])
    np.testing.assert_array_equal(batch.numpy(), expected)


def test_second_run_encodes_nothing_and_does_not_retry_known_bad_files(collection, tmp_path, tiny_encoder):
    root, good, bad = collection
    store_path = tmp_path / "store.h5"
    index_images(root, store_path, tiny_encoder, batch_size=4, workers=0, progress=False)
    counting = CountingEncoder(tiny_encoder)
    report = index_images(root, store_path, counting, batch_size=4, workers=0, progress=False)
    assert counting.encoded == 0
    assert (report.indexed, report.unchanged, report.skipped) == (0, good, len(bad))
    assert _skipped(report) == bad  # still reported, from the store's records


def test_only_changed_files_are_reencoded(photo_dir, tmp_path, tiny_encoder):
    store_path = tmp_path / "store.h5"
    index_images(photo_dir, store_path, tiny_encoder, workers=0, progress=False)
    with EmbeddingStore.open(store_path) as store:
        before = store.image_embeddings()[store.index_of("photo_00002.jpg")].copy()
    changed = photo_dir / "photo_00002.jpg"
    make_photo(999, (500, 375)).save(changed, "JPEG")
    counting = CountingEncoder(tiny_encoder)
    report = index_images(photo_dir, store_path, counting, workers=0, progress=False)
    assert counting.encoded == 1
    assert (report.indexed, report.unchanged) == (1, 11)
    with EmbeddingStore.open(store_path) as store:
        assert store.num_images == 12
        assert not np.array_equal(store.image_embeddings()[store.index_of("photo_00002.jpg")], before)


def test_a_fixed_bad_file_is_indexed(collection, tmp_path, tiny_encoder):
    root, good, bad = collection
    store_path = tmp_path / "store.h5"
    index_images(root, store_path, tiny_encoder, workers=0, progress=False)
    make_photo(7, (64, 48)).save(root / "bad" / "notes.jpg", "JPEG")
    report = index_images(root, store_path, tiny_encoder, workers=0, progress=False)
    assert (report.indexed, report.skipped) == (1, len(bad) - 1)
    with EmbeddingStore.open(store_path) as store:
        assert "bad/notes.jpg" in store.image_paths()
        assert "bad/notes.jpg" not in {record.path for record in store.skipped()}


def test_an_indexed_file_that_becomes_corrupt_leaves_the_store(photo_dir, tmp_path, tiny_encoder):
    store_path = tmp_path / "store.h5"
    index_images(photo_dir, store_path, tiny_encoder, workers=0, progress=False)
    (photo_dir / "photo_00004.jpg").write_bytes(b"overwritten by a failed download")
    report = index_images(photo_dir, store_path, tiny_encoder, workers=0, progress=False)
    assert (report.indexed, report.unchanged, report.skipped) == (0, 11, 1)
    with EmbeddingStore.open(store_path) as store:
        assert "photo_00004.jpg" not in store.image_paths()
        assert [record.path for record in store.skipped()] == ["photo_00004.jpg"]


def test_prune_removes_entries_of_deleted_files(collection, tmp_path, tiny_encoder):
    root, good, bad = collection
    store_path = tmp_path / "store.h5"
    index_images(root, store_path, tiny_encoder, workers=0, progress=False)
    (root / "photo_00001.jpg").unlink()
    (root / "bad" / "empty.jpg").unlink()
    kept = index_images(root, store_path, tiny_encoder, workers=0, progress=False)
    assert (kept.removed, kept.missing) == (0, 2)
    with EmbeddingStore.open(store_path) as store:
        assert store.num_images == good
    pruned = index_images(root, store_path, tiny_encoder, workers=0, prune=True, progress=False)
    assert (pruned.removed, pruned.indexed, pruned.skipped) == (2, 0, len(bad) - 1)
    with EmbeddingStore.open(store_path) as store:
        assert store.num_images == good - 1
        assert "photo_00001.jpg" not in store.image_paths()
        assert "bad/empty.jpg" not in {record.path for record in store.skipped()}


def test_report_has_the_documented_json_keys(photo_dir, tmp_path, tiny_encoder):
    report = index_images(photo_dir, tmp_path / "store.h5", tiny_encoder, workers=0, progress=False)
    summary = json.loads(json.dumps(report.to_dict()))
    assert set(summary) == REPORT_KEYS
    assert summary["indexed"] == 12 and summary["skipped_files"] == []
    assert summary["seconds"] > 0 and summary["images_per_second"] > 0


def test_an_open_store_is_used_and_left_open(photo_dir, tmp_path, tiny_encoder):
    with EmbeddingStore.open_or_create(tmp_path / "store.h5", tiny_encoder.meta, photo_dir) as store:
        report = index_images(photo_dir, store, tiny_encoder, workers=0, progress=False)
        assert report.indexed == 12 and store.num_images == 12 and not store.closed


def test_refuses_another_model_another_folder_and_bad_options(photo_dir, tmp_path, tiny_encoder):
    other = {**tiny_encoder.meta, "name": "other-model"}
    EmbeddingStore.create(tmp_path / "other.h5", other, photo_dir).close()
    with pytest.raises(ModelMismatchError):
        index_images(photo_dir, tmp_path / "other.h5", tiny_encoder, progress=False)
    with EmbeddingStore.open_or_create(tmp_path / "mine.h5", tiny_encoder.meta, photo_dir) as store, \
            pytest.raises(InvalidInputError, match="indexes images under"):
        index_images(tmp_path, store, tiny_encoder, progress=False)
    with pytest.raises(InvalidInputError, match="does not exist"):
        index_images(tmp_path / "missing", tmp_path / "new.h5", tiny_encoder, progress=False)
    assert not (tmp_path / "new.h5").exists()
    with pytest.raises(InvalidInputError, match="batch_size"):
        index_images(photo_dir, tmp_path / "new.h5", tiny_encoder, batch_size=0, progress=False)


def test_a_file_missing_during_a_run_is_retried_on_the_next(photo_dir, tmp_path, tiny_encoder, monkeypatch):
    """A folder moved away while indexing runs, then back: its files are indexed by the next run."""
    store_path = tmp_path / "store.h5"
    found = scan_images(photo_dir)  # the scan sees the file ...
    (photo_dir / "photo_00003.jpg").rename(tmp_path / "away.jpg")  # ... which is gone when it is decoded
    monkeypatch.setattr(indexing, "scan_images", lambda root: dict(found))
    report = index_images(photo_dir, store_path, tiny_encoder, workers=0, progress=False)
    assert (report.indexed, report.skipped) == (11, 1)
    assert _skipped(report) == {"photo_00003.jpg": "file not found"}  # reported, with its reason
    with EmbeddingStore.open(store_path) as store:
        assert store.skipped() == []  # not remembered as a bad file
    monkeypatch.undo()
    (tmp_path / "away.jpg").rename(photo_dir / "photo_00003.jpg")  # back: same size and mtime
    report = index_images(photo_dir, store_path, tiny_encoder, workers=0, progress=False)
    assert (report.indexed, report.unchanged, report.skipped) == (1, 11, 0)
    with EmbeddingStore.open(store_path) as store:
        assert "photo_00003.jpg" in store.image_paths()


def test_transient_failures_recorded_by_older_versions_are_retried(photo_dir, tmp_path, tiny_encoder):
    store_path = tmp_path / "store.h5"
    stamps = scan_images(photo_dir)
    reasons = {"photo_00001.jpg": "permission denied", "photo_00002.jpg": CRASHED,
               "photo_00004.jpg": "truncated file"}
    with EmbeddingStore.open_or_create(store_path, tiny_encoder.meta, photo_dir) as store:
        store.add_skipped([SkippedFile(path, reason, *stamps[path]) for path, reason in reasons.items()])
    report = index_images(photo_dir, store_path, tiny_encoder, workers=0, progress=False)
    assert (report.indexed, report.skipped) == (11, 1)
    assert _skipped(report) == {"photo_00004.jpg": "truncated file"}  # bad content: kept until it changes
    with EmbeddingStore.open(store_path) as store:
        assert [record.path for record in store.skipped()] == ["photo_00004.jpg"]


def test_an_absurd_batch_size_is_refused_with_a_clear_message(photo_dir, tmp_path, tiny_encoder, capsys):
    with pytest.raises(InvalidInputError, match=f"between 1 and {MAX_BATCH_SIZE:,}"):
        index_images(photo_dir, tmp_path / "store.h5", tiny_encoder, batch_size=MAX_BATCH_SIZE + 1,
                     progress=False)
    assert main(["index", str(photo_dir), "--store", str(tmp_path / "cli.h5"), "--model", "tiny",
                 "--batch-size", "1000000000000"]) == 2
    err = capsys.readouterr().err
    assert "error: batch_size must be between 1 and 4,096" in err and "Traceback" not in err
    assert not (tmp_path / "store.h5").exists() and not (tmp_path / "cli.h5").exists()
    report = index_images(photo_dir, tmp_path / "store.h5", tiny_encoder, batch_size=MAX_BATCH_SIZE,
                          workers=1, progress=False)  # the largest batch, over a few files: slots for 12
    assert report.indexed == 12


def _linked_folder(folder: Path, count: int) -> Path:
    """`count` hard links to one 2000x1500 JPEG: distinct files that cost real decoding, no disk."""
    folder.mkdir()
    original = folder / "original.jpg"
    make_photo(11, (2000, 1500)).save(original, "JPEG", quality=90)
    for i in range(1, count):
        os.link(original, folder / f"link_{i:04d}.jpg")
    return folder


def _wait_for_first_commit(process: subprocess.Popen, store_path: Path, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if store_path.exists():
            with EmbeddingStore.open(store_path) as store:
                if store.num_images:
                    return store.num_images
        time.sleep(0.02)
    raise AssertionError("no commit within the timeout")


def _committed_paths(store_path: Path) -> list[str]:
    with EmbeddingStore.open(store_path) as store:
        return store.image_paths()


@pytest.mark.slow
def test_resume_after_sigkill_reencodes_only_uncommitted_work(tmp_path, tiny_encoder):
    total = 400
    folder = _linked_folder(tmp_path / "images", total)
    store_path = tmp_path / "store.h5"
    script = ("import sys; from clipwidgets.model import load_model; from clipwidgets.indexing import "
              "index_images; index_images(sys.argv[1], sys.argv[2], load_model('tiny', device='cpu'), "
              "batch_size=4, workers=1, progress=False)")
    process = subprocess.Popen([sys.executable, "-c", script, str(folder), str(store_path)], cwd=REPO)
    _wait_for_first_commit(process, store_path)
    helpers = psutil.Process(process.pid).children(recursive=True)  # forkserver and decode worker
    process.kill()
    process.wait()
    committed = _committed_paths(store_path)
    assert 0 < len(committed) < total, "indexing finished before the kill; use a bigger folder"
    _, alive = psutil.wait_procs(helpers, timeout=30)
    assert not alive, f"worker processes outlived the killed indexer: {alive}"
    counting = CountingEncoder(tiny_encoder)
    report = index_images(folder, store_path, counting, batch_size=4, workers=0, progress=False)
    assert counting.encoded == report.indexed == total - len(committed)
    final = _committed_paths(store_path)
    assert len(final) == len(set(final)) == total
    assert final[: len(committed)] == committed  # committed rows were kept, not redone


@pytest.mark.slow
def test_ctrl_c_commits_and_exits_130_with_a_message(tmp_path):
    total = 600
    folder = _linked_folder(tmp_path / "images", total)
    store_path = tmp_path / "store.h5"
    command = [sys.executable, "-m", "clipwidgets.cli", "index", str(folder), "--store", str(store_path),
               "--model", "tiny", "--batch-size", "4", "--workers", "1"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_first_commit(process, store_path)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Interrupted. Everything committed before the interrupt is kept" in stderr
    assert "Traceback" not in stderr
    committed = _committed_paths(store_path)
    assert 0 < len(committed) < total
    assert main(["index", str(folder), "--store", str(store_path), "--workers", "0", "--json"]) == 0
    assert len(set(_committed_paths(store_path))) == total


def test_cli_index_json_then_text(collection, tmp_path, capsys):
    root, good, bad = collection
    store_path = tmp_path / "store.h5"
    assert main(["index", str(root), "--store", str(store_path), "--model", "tiny", "--workers", "0",
                 "--batch-size", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == REPORT_KEYS
    assert (summary["indexed"], summary["skipped"]) == (good, len(bad))
    assert {entry["path"]: entry["reason"] for entry in summary["skipped_files"]} == bad
    (root / "photo_00003.jpg").unlink()
    assert main(["index", str(root), "--store", str(store_path), "--prune"]) == 0  # the store's model
    out = capsys.readouterr().out
    assert "indexed 0 images" in out and f"{good - 1} unchanged" in out and "1 removed" in out
    assert "skipped bad/empty.jpg: empty file (0 bytes)" in out


def test_cli_index_missing_and_empty_folders(tmp_path, capsys):
    assert main(["index", str(tmp_path / "missing"), "--store", str(tmp_path / "s.h5"),
                 "--model", "tiny"]) == 2
    assert "error: Image folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["index", str(tmp_path / "empty"), "--store", str(tmp_path / "s.h5"), "--model", "tiny"]) == 0
    assert "No images found" in capsys.readouterr().out
