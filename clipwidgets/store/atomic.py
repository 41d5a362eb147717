"""Atomic file operations: fsync, write-then-rename, the writer lock, leftovers of killed writers.

The manifest goes through `write_atomically`: written to a temp name in the same folder, fsynced
together with the commit's other new files and their folder, renamed onto its final name, then its
folder is fsynced. A process killed at any moment leaves either no file or the complete one under the
final name (plus a temp file the next writer deletes). Every file is written before the first fsync,
so the filesystem can commit them in fewer journal transactions.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import StoreError

if os.name == "nt":  # the writer lock: msvcrt on Windows (untested there), flock elsewhere
    import msvcrt
else:
    import fcntl

__all__ = ["fsync_all", "fsync_path", "is_temp_name", "lock", "remove_temp_files", "signature", "temp_path",
           "unlock", "write_atomically"]

_TEMP = re.compile(r"\..+\.tmp-\d+-[0-9a-f]+")


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (some filesystems cannot fsync a folder: that error is ignored)."""
    is_dir = path.is_dir()
    fd = os.open(path, os.O_RDONLY if is_dir else os.O_RDWR)
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(fd)


def fsync_all(paths: Sequence[Path]) -> None:
    """fsync every path, files before folders: once the files' journal commit is done, it also holds
    their new folder entries, so the folders' fsyncs usually find nothing left to commit.

    (Concurrent fsyncs from threads were measured too: no faster on this 2-core machine, where the
    threads wait for a core.)"""
    for path in sorted(paths, key=lambda p: p.is_dir()):
        fsync_path(path)


def temp_path(path: Path) -> Path:
    """A fresh temp name beside `path`: `.<name>.tmp-<pid>-<random hex>`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def is_temp_name(name: str) -> bool:
    """True for names `temp_path` makes (the only files cleanup may delete besides segments)."""
    return _TEMP.fullmatch(name) is not None


def write_atomically(path: Path, write: Callable[[Path], None], *, durable: Sequence[Path] = ()) -> None:
    """Call `write(temp)`, fsync the temp file together with the files and folders `durable` lists
    (so they are on disk before anything points to them), rename it onto `path`, fsync its folder.
    The temp goes on any failure."""
    tmp = temp_path(path)
    try:
        write(tmp)
        fsync_all([tmp, *durable])
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temp file behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)


def signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime_ns, size) of `path`, or None when it does not exist: changes on every commit."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def lock(path: Path) -> int:
    """Take the writer lock (`<path>.lock`) without waiting; StoreError when another process holds it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise StoreError(f"Cannot open the lock file {lock_path} of store {path}: {error}. "
                         "The folder must be writable to change the store.") from error
    try:
        if os.name == "nt":
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        os.close(fd)
        raise StoreError(f"Another process is writing to {path} (it holds {lock_path}). Wait for it to "
                         "finish, or open the store read-only with mode='r'.") from None
    return fd


def unlock(fd: int | None) -> None:
    """Release a lock taken by `lock` (None: nothing to release)."""
    if fd is not None:
        if os.name == "nt":
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def remove_temp_files(folder: Path, name: str) -> None:
    """Delete the temp files of file `name` that killed writers left in `folder`.

    Only our exact name pattern is touched; the caller holds the writer lock.
    """
    prefix = f".{name}.tmp-"
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if entry.name.startswith(prefix) and is_temp_name(entry.name):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
