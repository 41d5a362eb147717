"""malloc tuning is scoped to indexing runs: an encoder changes nothing, a run restores the defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipwidgets import malloc
from clipwidgets.indexing import index_images

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys
import numpy as np
from clipwidgets.indexing import index_images
from clipwidgets.malloc import reuse_freed_memory
from clipwidgets.model import load_model

def faults_per_block():
    np.ones(16 << 20, dtype=np.float32)  # warm-up: the first 64 MB block may grow the heap
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        np.ones(16 << 20, dtype=np.float32)  # allocated, touched, freed
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4

encoder = load_model("tiny", device="cpu")
after_encoder = faults_per_block()
with reuse_freed_memory() as applied:
    during = faults_per_block()
index_images(sys.argv[1], sys.argv[2], encoder, workers=0, progress=False)
after_run = faults_per_block()
print(json.dumps({"applied": applied, "after_encoder": after_encoder, "during": during,
                  "after_run": after_run}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_creating_an_encoder_leaves_malloc_alone_and_a_run_restores_it(photo_dir, tmp_path):
    """A 64 MB block freed and allocated again faults its pages in each time under glibc's defaults
    (above its 32 MB dynamic ceiling), and not at all while freed memory is kept for reuse."""
    env = {key: value for key, value in os.environ.items() if "MALLOC" not in key}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", CHILD, str(photo_dir), str(tmp_path / "s.h5")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    if not result["applied"]:
        pytest.skip("not glibc")
    assert result["during"] * 10 < result["after_encoder"], result  # the encoder did not change malloc
    assert result["during"] * 10 < result["after_run"], result  # the run put the defaults back


class RecordingLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append(("mallopt", parameter, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


class RecordingEncoder:
    """The real tiny encoder, noting which malloc calls had happened when each batch ran."""

    def __init__(self, encoder, libc: RecordingLibc) -> None:
        self.encoder, self.libc, self.calls_at_batches = encoder, libc, []

    def encode_pixels(self, pixels):
        self.calls_at_batches.append(len(self.libc.calls))
        return self.encoder.encode_pixels(pixels)

    def __getattr__(self, name):
        return getattr(self.encoder, name)


def test_a_cpu_run_applies_the_setting_for_its_batches_only(photo_dir, tmp_path, tiny_encoder, monkeypatch):
    libc = RecordingLibc()
    monkeypatch.setattr(malloc, "_glibc", lambda: libc)
    encoder = RecordingEncoder(tiny_encoder, libc)
    index_images(photo_dir, tmp_path / "s.h5", encoder, batch_size=4, workers=0, progress=False)
    reuse, default = malloc.REUSE_FREED_BYTES, 128 << 10
    assert libc.calls == [("mallopt", -3, reuse), ("mallopt", -1, reuse),
                          ("mallopt", -3, default), ("mallopt", -1, default), ("malloc_trim", 0)]
    assert encoder.calls_at_batches == [2, 2, 2]  # every batch ran with the setting on
    libc.calls.clear()
    index_images(photo_dir, tmp_path / "s.h5", encoder, workers=0, progress=False)
    assert libc.calls == []  # nothing to encode: nothing changed


def test_thresholds_the_user_set_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    with malloc.reuse_freed_memory() as applied:
        assert applied is False
