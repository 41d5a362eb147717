"""Reading a whole store (either format) from disk, and committing a snapshot to it.

A commit writes new segment and text files under fresh names, then atomically replaces the manifest
(the new files, their folder and the temp manifest are fsynced together before the rename), then
deletes the files the new manifest no longer lists. Until the
rename nothing a reader can see has changed, so a crash at any point leaves the previous or the new
complete commit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .atomic import is_temp_name, signature, write_atomically
from .format import damaged, open_checked, read_root_attrs
from .format_v1 import read_v1
from .manifest import SEGMENT_NAME, TEXTS_NAME, read_manifest, segments_folder, write_manifest
from .merge import CREDIT_PER_BYTE, plan_merge
from .segments import Segment, map_segment, write_segment
from .snapshot import Snapshot
from .texts import write_texts

__all__ = ["commit", "failure_message", "merge", "read_store", "remove_unlisted", "without_lost_texts"]


def read_store(path: Path, *, reuse: Mapping[str, Any] | None = None, dropped: list[str] | None = None,
               ) -> tuple[dict[str, Any], Snapshot, tuple[int, int, int] | None]:
    """(attributes, snapshot, manifest signature) of the store at `path`.

    A writer may delete segments between our reading the manifest and mapping them (a merge); then
    the manifest has changed and is read again.
    """
    for attempt in range(5):
        before = signature(path)
        try:
            with open_checked(path) as f:
                attrs = read_root_attrs(path, f)
                if attrs["format_version"] == 1:
                    snap = read_v1(path, f, attrs)
                else:
                    snap = read_manifest(path, f, attrs, reuse=reuse, dropped=dropped)
        except StoreError:
            if attempt < 4 and signature(path) != before:
                continue
            raise
        if dropped is None:
            _check_links(path, snap)
        return attrs, snap, before
    raise AssertionError("unreachable")


def _check_links(path: Path, snap: Snapshot) -> None:
    linked = snap.texts.image_id >= 0
    if linked.any() and (snap.rows_of_ids(snap.texts.image_id[linked]) < 0).any():
        raise damaged(path, "texts linked to images that do not exist")


def without_lost_texts(snap: Snapshot) -> Snapshot:
    """`snap` without the texts linked to images no segment holds (their segment was dropped)."""
    linked = snap.texts.image_id >= 0
    lost = np.zeros(len(linked), bool)
    lost[linked] = snap.locate_ids(snap.texts.image_id[linked])[0] < 0
    return snap.edited(texts=snap.texts.kept(~lost)) if lost.any() else snap


def commit(path: Path, attrs: Mapping[str, Any], snap: Snapshot, *, merge_budget: float,
           merge_all: bool = False) -> Snapshot:
    """Write `snap`'s pending segments and texts, merge within `merge_budget` bytes (`merge_all`: every
    segment into one), replace the manifest. Returns the committed snapshot (segments mapped).

    On failure every file written by this commit is removed and the error propagates; the store is
    unchanged.
    """
    folder = segments_folder(path)
    written: list[Path] = []
    try:
        folder.mkdir(exist_ok=True)
        snap, new_bytes = _write_pending(folder, attrs, snap, written)
        if merge_all and len(snap.segments) > 1:
            snap = merge(folder, attrs, snap, (0, len(snap.segments)), written)
        credit = min(snap.merge_credit + CREDIT_PER_BYTE * new_bytes, sum(snap.sizes()[2]))
        while (window := plan_merge(*snap.sizes(), budget=max(merge_budget, credit))) is not None:
            size = sum(snap.sizes()[2][window[0]:window[1]])
            snap = merge(folder, attrs, snap, window, written)
            if size > merge_budget:  # paid for by credit
                credit -= size
        snap = snap.edited(merge_credit=int(max(0, credit)))
        durable = [*written, folder] if written else []  # on disk, and listed in their folder
        write_atomically(path, lambda tmp: write_manifest(tmp, path, attrs, snap), durable=durable)
    except BaseException:
        for file in written:
            with contextlib.suppress(OSError):
                file.unlink()
        raise
    remove_unlisted(folder, snap)
    return snap


def failure_message(path: Path, error: BaseException, images: int) -> str:
    """What a failed commit tells the user."""
    disk_full = getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error)
    reason = "the disk is full" if disk_full else str(error)
    return (f"Could not save store {path}: {reason}. The store still holds its previous state ({images} "
            "images); free space or fix permissions and retry.")


def _new_file(folder: Path, attrs: Mapping[str, Any], parts: list[tuple[Segment, np.ndarray]],
              written: list[Path]) -> Segment:
    first = int(parts[0][0].ids[parts[0][1][0]])
    name = f"seg-{first:016x}-{secrets.token_hex(4)}.h5"
    target = folder / name
    dim, dtype = int(attrs["model_meta"]["embed_dim"]), attrs["dtype"]
    written.append(target)
    # Written under its final name: no manifest lists it until the commit's rename, and a file left
    # half-written by a killed writer is deleted by the next one (remove_unlisted).
    rows, offsets, path_bytes = write_segment(target, parts, dim=dim, dtype=dtype)  # fsynced by commit()
    return map_segment(target, name, rows=rows, dim=dim, dtype=dtype, file_bytes=target.stat().st_size,
                       offsets=offsets, path_bytes=path_bytes)


def _replace_segments(snap: Snapshot, start: int, stop: int, new: Segment | None) -> Snapshot:
    """`snap` with segments start..stop replaced by `new`; their tombstones go (the rows are gone)."""
    old = snap.segments[start:stop]
    low, high = (int(old[0].ids[0]), int(old[-1].ids[-1])) if old and len(old[-1]) else (0, -1)
    dead = snap.dead[(snap.dead < low) | (snap.dead > high)]
    segments = (*snap.segments[:start], *(() if new is None else (new,)), *snap.segments[stop:])
    return snap.edited(segments=segments, dead=dead)


def _write_pending(folder: Path, attrs: Mapping[str, Any], snap: Snapshot,
                   written: list[Path]) -> tuple[Snapshot, int]:
    """Write the pending rows as a segment and changed texts as a text file; (snapshot, segment bytes)."""
    new_bytes = 0
    pending = [k for k, s in enumerate(snap.segments) if s.name is None]
    if pending:
        start = pending[0]
        if pending != list(range(start, len(snap.segments))):
            raise AssertionError("pending segments must follow the committed ones")
        parts = [(snap.segments[k], snap.live_locals(k)) for k in pending]
        parts = [(s, rows) for s, rows in parts if len(rows)]
        new = _new_file(folder, attrs, parts, written) if parts else None
        new_bytes = new.file_bytes if new is not None else 0
        snap = _replace_segments(snap, start, len(snap.segments), new)
    if snap.texts.name is None and len(snap.texts):
        name = f"texts-{secrets.token_hex(4)}.h5"
        written.append(folder / name)
        write_texts(folder / name, snap.texts)
        snap = snap.edited(texts=_named(snap.texts, name))
    return snap, new_bytes


def _named(texts: Any, name: str) -> Any:
    from dataclasses import replace

    return replace(texts, name=name)


def merge(folder: Path, attrs: Mapping[str, Any], snap: Snapshot, window: tuple[int, int],
          written: list[Path]) -> Snapshot:
    """Merge the segments of `window` (their live rows) into one new segment file."""
    start, stop = window
    parts = [(snap.segments[k], snap.live_locals(k)) for k in range(start, stop)]
    parts = [(s, rows) for s, rows in parts if len(rows)]
    new = _new_file(folder, attrs, parts, written) if parts else None
    return _replace_segments(snap, start, stop, new)


def remove_unlisted(folder: Path, snap: Snapshot) -> None:
    """Delete segment, text and temp files of `folder` that `snap` does not list (the writer's lock held).

    Readers that mapped a deleted segment keep reading it (the mapping holds the file); readers that
    had not mapped it yet read the new manifest instead.
    """
    listed = {s.name for s in snap.segments} | {snap.texts.name}
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            ours = SEGMENT_NAME.fullmatch(entry.name) or TEXTS_NAME.fullmatch(entry.name)
            if (ours and entry.name not in listed) or is_temp_name(entry.name):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
