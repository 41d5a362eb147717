"""Zip archives checked before anything is extracted, and members extracted without leftovers.

`zip_problem` reads every member once (CRCs and compressed data), so a damaged archive is refused
before a single file is written; `extracted_bytes` is what extraction will write (the members'
uncompressed sizes, which also bound what a zip bomb can write: Python's zipfile never returns
more than the declared size). `extract_member` writes through a temporary file that is removed
whatever goes wrong, and turns a full disk or a folder in the way into a DatasetError.
"""

from __future__ import annotations

import errno
import lzma
import shutil
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ..errors import DatasetError

__all__ = ["DISK_FULL", "Members", "extract_all", "extract_member", "extracted_bytes", "is_extracted",
           "skipped_member", "unsafe_member", "zip_problem"]

Members = list[tuple[zipfile.ZipInfo, Path]]  # (archive member, the file it is extracted to)

# errno values meaning "no room for more bytes": a full disk, a quota, a file-size limit.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# What reading damaged compressed data raises besides BadZipFile (bad deflate/LZMA data, unknown
# compression methods, truncated files).
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, EOFError, OSError,
                ValueError)


def zip_problem(archive: Path) -> str | None:
    """Why `archive` cannot be extracted safely (not a zip, damaged, unsafe names), or None."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            unsafe = [name for name in zipped.namelist() if unsafe_member(name)]
            if unsafe:
                return f"it holds members that would be written outside the data folder: {unsafe[:3]}"
            bad = zipped.testzip()
    except _READ_ERRORS as error:
        return f"it is not a readable zip archive, or its data is damaged ({type(error).__name__}: {error})"
    if bad is not None:
        return f"its member {bad!r} fails the CRC check (the file is damaged)"
    return None


def unsafe_member(name: str) -> bool:
    """True for a member name that would land outside the folder it is extracted into."""
    posix = PurePosixPath(name.replace("\\", "/"))
    return posix.is_absolute() or ".." in posix.parts or (len(name) > 1 and name[1] == ":")


def skipped_member(info: zipfile.ZipInfo) -> bool:
    """Folders and macOS metadata (`__MACOSX/`, `._*`), which are never extracted."""
    parts = PurePosixPath(info.filename).parts
    return info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("._")


def extracted_bytes(members: Iterable[zipfile.ZipInfo]) -> int:
    """Bytes that extracting `members` writes: their uncompressed sizes."""
    return sum(info.file_size for info in members)


def extract_member(zipped: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Write one member to `target` through `<target>.tmp`, which never outlives a failure."""
    if target.is_dir():
        raise DatasetError(f"{zipped.filename} holds a file {info.filename!r}, but {target} is a folder; "
                           "it is not the expected archive, or that folder is in the way. Fetch the "
                           "archive again, or move the folder away.")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    try:
        with zipped.open(info) as source, open(temporary, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        temporary.replace(target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.errno in DISK_FULL:
            raise DatasetError(f"The disk holding {target.parent} filled up while extracting "
                               f"{info.filename!r} from {zipped.filename} ({error.strerror}). Free some "
                               "space and run the same command again: files already extracted are "
                               "kept.") from error
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def is_extracted(info: zipfile.ZipInfo, target: Path) -> bool:
    """True when `target` is a file of the member's size (taken as extracted before)."""
    return target.is_file() and target.stat().st_size == info.file_size


def extract_all(archive: Path, members: Members, *, progress: bool, overwrite: bool = False) -> None:
    """Extract `members` of `archive`; unless `overwrite`, targets already extracted are kept."""
    from tqdm.auto import tqdm

    with zipfile.ZipFile(archive) as zipped:
        for info, target in tqdm(members, desc=f"extracting {archive.name}", unit="file",
                                 disable=not progress, leave=False):
            if overwrite or not is_extracted(info, target):
                extract_member(zipped, info, target)
