"""Committer: commits on a short time budget (and a pending cap), never records transient failures."""

from __future__ import annotations

import numpy as np
import pytest

from clipwidgets import committer as committer_module
from clipwidgets.committer import Committer
from clipwidgets.decode_workers import CRASHED, HUNG
from clipwidgets.store import EmbeddingStore


class FakeClock:
    """time.monotonic for the Committer, moved by hand: no test waits or depends on speed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(committer_module, "_clock", fake)
    return fake


@pytest.fixture
def store(tmp_path, tiny_encoder):
    with EmbeddingStore.open_or_create(tmp_path / "store.h5", tiny_encoder.meta, tmp_path) as opened:
        yield opened


FOUND = {f"img_{i:03d}.jpg": (1000 + i, 5_000_000 + i) for i in range(40)}


def _vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _add(committer: Committer, names: list[str]) -> None:
    committer.add_images(names, _vectors(len(names), committer.store.dim), [(64, 48)] * len(names))


def _committed(store: EmbeddingStore) -> int:
    with EmbeddingStore.open(store.path) as reader:
        return reader.num_images


def test_commits_when_the_time_budget_has_passed_not_per_batch(store, clock):
    names = list(FOUND)
    committer = Committer(store, FOUND, 4, commit_every_s=2.0)
    for start in range(0, 12, 4):  # three full batches within the budget: nothing committed yet
        _add(committer, names[start:start + 4])
        clock.now += 0.5
    assert _committed(store) == 0 and committer.pending == 12
    clock.now += 0.6  # 2.1 s since the Committer started
    _add(committer, names[12:13])  # even a partial batch is committed once the budget is spent
    assert _committed(store) == 13 and committer.pending == 0
    _add(committer, names[13:14])
    assert _committed(store) == 13  # the budget starts again after each commit
    committer.commit()  # the end of the run (also on Ctrl-C and errors)
    assert _committed(store) == 14 and committer.images_committed == 14


def test_a_pending_cap_commits_whatever_the_time(store, clock, monkeypatch):
    monkeypatch.setattr(committer_module, "MAX_PENDING", 6)
    committer = Committer(store, FOUND, 4)
    _add(committer, list(FOUND)[:4])
    assert _committed(store) == 0
    _add(committer, list(FOUND)[4:8])
    assert _committed(store) == 8


def test_the_default_budget_is_a_few_seconds(store, clock):
    committer = Committer(store, FOUND, 32)
    _add(committer, list(FOUND)[:1])
    clock.now += committer_module.COMMIT_EVERY_S
    _add(committer, list(FOUND)[1:2])
    assert committer_module.COMMIT_EVERY_S <= 5 and _committed(store) == 2


def test_transient_failures_are_reported_but_not_recorded(store, clock):
    names = list(FOUND)
    earlier = Committer(store, FOUND, 4)
    _add(earlier, names[:2])  # indexed by an earlier run; then changed, and failing now
    earlier.commit()
    committer = Committer(store, FOUND, 4)
    committer.add_skipped(names[0], CRASHED)
    committer.add_skipped(names[1], HUNG.format(120))
    committer.add_skipped(names[2], "file not found")
    committer.add_skipped(names[3], "truncated file")
    committer.commit()
    assert [record.path for record in committer.skipped] == names[:4]  # all four in the run's report
    with EmbeddingStore.open(store.path) as reader:
        assert [(r.path, r.reason, r.size) for r in reader.skipped()] == [(names[3], "truncated file", 1003)]
        assert reader.num_images == 2  # a transient failure keeps the file's old row
