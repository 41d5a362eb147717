"""Decoding workers: crash and hang isolation, pausing, shared-memory slots, scripts without a main guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import psutil
from test_images import crash_on_marked_files, hang_on_marked_files

from clipwidgets import decode_workers
from clipwidgets.decode_workers import CRASHED, HUNG, decode_in_order, is_transient, worker_context
from clipwidgets.images import ModelInputSpec, scan_images
from clipwidgets.synthetic import make_photos

REPO = Path(__file__).resolve().parents[1]


def _decode_with_one_bad_copy(photo_dir: Path, encoder, name: str, loader, *, workers: int) -> dict:
    """Decode the folder plus a copy of one photo called `name` through `loader` in `workers` processes;
    checks that every file comes back in order, and returns path -> outcome."""
    (photo_dir / name).write_bytes((photo_dir / "photo_00000.jpg").read_bytes())
    relpaths = list(scan_images(photo_dir))
    spec = ModelInputSpec.from_meta(encoder.meta["preprocess"])
    results = list(decode_in_order(photo_dir, relpaths, spec, workers=workers, window=8, loader=loader))
    assert [path for path, _ in results] == relpaths
    return dict(results)


def test_a_file_that_kills_its_worker_is_skipped_alone(photo_dir, tiny_encoder):
    outcome = _decode_with_one_bad_copy(photo_dir, tiny_encoder, "photo_00005_crash.jpg",
                                        crash_on_marked_files, workers=1)
    assert outcome.pop("photo_00005_crash.jpg") == CRASHED
    assert all(pixels.shape == (32, 32, 3) for pixels, _ in outcome.values())


def test_a_file_whose_decoder_hangs_is_stopped_and_skipped_alone(photo_dir, tiny_encoder, monkeypatch):
    monkeypatch.setattr(decode_workers, "DECODE_TIMEOUT_S", 3.0)
    outcome = _decode_with_one_bad_copy(photo_dir, tiny_encoder, "photo_00005_hang.jpg",
                                        hang_on_marked_files, workers=2)
    assert outcome.pop("photo_00005_hang.jpg") == HUNG.format(3.0)
    assert all(pixels.shape == (32, 32, 3) for pixels, _ in outcome.values())
    hung_worker = int((photo_dir / "photo_00005_hang.pid").read_text())
    assert not psutil.pid_exists(hung_worker) or psutil.Process(hung_worker).status() == psutil.STATUS_ZOMBIE


def test_decoding_workers_wait_while_the_model_runs(photo_dir, tiny_encoder):
    relpaths = list(scan_images(photo_dir))
    spec = ModelInputSpec.from_meta(tiny_encoder.meta["preprocess"])
    model_idle = worker_context().Event()  # not set: "the model is running"
    decoded = decode_in_order(photo_dir, relpaths, spec, workers=1, window=8, model_idle=model_idle)
    results = []
    consumer = threading.Thread(target=lambda: [results.append(item) for item in decoded])
    consumer.start()
    consumer.join(timeout=1.5)
    assert results == []  # the worker has started, but no file while the model runs
    model_idle.set()
    consumer.join(timeout=120)
    assert [path for path, _ in results] == relpaths


def test_only_content_failures_are_permanent():
    assert not is_transient("truncated file")
    assert not is_transient("not an image (format not recognised)")
    assert not is_transient("corrupt: file not found in the archive")
    for reason in ("file not found", "permission denied", CRASHED, HUNG.format(120), HUNG.format(3.0)):
        assert is_transient(reason), reason


class _RecordedSlots(decode_workers.SharedSlots):
    counts: list[int] = []

    def __init__(self, count, image_size, *, name=None) -> None:
        if name is None:
            _RecordedSlots.counts.append(count)
        super().__init__(count, image_size, name=name)


def test_shared_memory_slots_scale_with_the_files_not_the_window(photo_dir, tiny_encoder, monkeypatch):
    """`--batch-size 1000000000000` asked for 2e12 slots (ENOMEM): slots are bounded by the files."""
    monkeypatch.setattr(decode_workers, "SharedSlots", _RecordedSlots)
    _RecordedSlots.counts = []
    relpaths = list(scan_images(photo_dir))
    spec = ModelInputSpec.from_meta(tiny_encoder.meta["preprocess"])
    results = list(decode_in_order(photo_dir, relpaths, spec, workers=2, window=2 * 10**12))
    assert [path for path, _ in results] == relpaths
    assert all(pixels.shape == (32, 32, 3) for _, (pixels, _) in results)
    assert _RecordedSlots.counts and max(_RecordedSlots.counts) <= len(relpaths)


def test_slots_are_capped_and_results_use_the_pipe_when_none_fit(photo_dir, tiny_encoder, monkeypatch):
    monkeypatch.setattr(decode_workers, "SharedSlots", _RecordedSlots)
    relpaths = list(scan_images(photo_dir))
    spec = ModelInputSpec.from_meta(tiny_encoder.meta["preprocess"])
    image_bytes = 32 * 32 * 3
    for cap, expected_slots in ((5 * image_bytes, 5), (image_bytes, None)):  # 5 slots; < workers
        monkeypatch.setattr(decode_workers, "SLOT_BYTES_MAX", cap)
        _RecordedSlots.counts = []
        results = list(decode_in_order(photo_dir, relpaths, spec, workers=2, window=64))
        assert [path for path, _ in results] == relpaths
        assert all(pixels.shape == (32, 32, 3) for _, (pixels, _) in results)
        assert _RecordedSlots.counts == ([] if expected_slots is None else [expected_slots])


NO_MAIN_GUARD = """
import json, os, sys
with open(sys.argv[3], "a") as runs:  # one line per execution of this script
    runs.write(f"{os.getpid()}\\n")
from clipwidgets import images
decoded_here = []
original = images.load_model_input
def spy(path, spec):
    decoded_here.append(path)
    return original(path, spec)
images.load_model_input = spy  # sees decoding in this process only: workers import their own copy
from clipwidgets.indexing import index_images
from clipwidgets.model import load_model
report = index_images(sys.argv[1], sys.argv[2], load_model("tiny", device="cpu"), workers=2, progress=False)
print(json.dumps({"indexed": report.indexed, "decoded_here": len(decoded_here)}))
"""


def test_a_script_without_a_main_guard_decodes_in_workers_and_is_not_rerun(tmp_path):
    make_photos(tmp_path / "images", 6)
    script = tmp_path / "no_guard.py"
    script.write_text(NO_MAIN_GUARD)
    runs = tmp_path / "runs.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "images"), str(tmp_path / "s.h5"),
                           str(runs)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"indexed": 6, "decoded_here": 0}
    assert len(runs.read_text().split()) == 1, "the script ran again in a worker process"
    assert "could not start" not in done.stderr


def test_a_pool_found_broken_while_submitting_loses_no_chunk(photo_dir, tiny_encoder, monkeypatch):
    """A worker that dies while more chunks are being submitted breaks the pool under `submit`
    itself; the chunk being submitted must still come back (it once went missing: a flaky test)."""
    submit = decode_workers._DecodePool._submit
    calls = []

    def breaks_once(pool, images_dir, number, chunk):
        calls.append(number)
        if len(calls) == 3:  # the third submission finds the pool broken
            raise BrokenProcessPool("a worker died while chunks were being submitted")
        return submit(pool, images_dir, number, chunk)

    monkeypatch.setattr(decode_workers._DecodePool, "_submit", breaks_once)
    relpaths = list(scan_images(photo_dir))
    spec = ModelInputSpec.from_meta(tiny_encoder.meta["preprocess"])
    results = list(decode_in_order(photo_dir, relpaths, spec, workers=1, window=4))
    assert [path for path, _ in results] == relpaths
    assert all(not isinstance(result, str) for _, result in results)
