"""Resumable HTTP downloads with a free-space check, a size check and an optional sha256 check.

A transfer writes `<file>.part`; an interrupted transfer resumes it with an HTTP Range request
(automatically up to `retries` times, and again on the next call). Only a complete, verified file
is renamed to its final name. A disk that fills up (a stream without Content-Length cannot be
checked in advance) is a DatasetError saying so, never an OSError traceback.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .archives import DISK_FULL

__all__ = [
    "CHUNK_BYTES", "CONNECT_TIMEOUT_S", "DownloadError", "check_free_space", "download_file", "sha256_of"
]

CONNECT_TIMEOUT_S = 15.0
CHUNK_BYTES = 1 << 20


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def check_free_space(folder: str | Path, needed_bytes: int, *, what: str) -> None:
    """Raise DatasetError when `folder`'s file system has less than `needed_bytes` free."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise DatasetError(f"Not enough free disk space in {folder} for {what}: need about "
                           f"{_gigabytes(needed_bytes)}, {_gigabytes(free)} free. Free some space or "
                           "choose another data folder.")


class DownloadError(DatasetError):
    """The server could not be reached, refused the file, or the transfer broke off."""


def download_file(url: str, destination: str | Path, *, sha256: str | None = None,
                  space_factor: float = 1.0, retries: int = 2, timeout: float = CONNECT_TIMEOUT_S,
                  progress: bool = True) -> str:
    """Download `url` to `destination`, resuming `<destination>.part` if a previous try left one.

    Returns the sha256 of the complete file. `space_factor` is the room needed per byte of the
    file (e.g. 2.2 to leave space for extracting an archive); the check runs once the size is
    known. `sha256`, when given, must match; on a mismatch the file is deleted and DatasetError
    says so.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    for attempt in range(retries + 1):
        try:
            total = _transfer(url, partial, space_factor=space_factor, timeout=timeout, progress=progress)
            break
        except _Interrupted as error:
            if attempt == retries:
                raise DownloadError(f"The download of {url} stopped at {error.received:,} of "
                                   f"{error.total:,} bytes ({error.reason}). The partial file "
                                   f"{partial} is kept: run the same command again to resume.") from error
    size = partial.stat().st_size
    if total is not None and size != total:
        partial.unlink()
        raise DatasetError(f"{url} gave {size:,} bytes but announced {total:,}; the partial file was "
                           "deleted. Run the command again to download it afresh.")
    actual = sha256_of(partial)
    if sha256 is not None and actual != sha256.lower():
        partial.unlink()
        raise DatasetError(f"Checksum mismatch for {url}: expected sha256 {sha256.lower()}, got "
                           f"{actual}. The bad file was deleted; run the command again, and if it "
                           "fails again the file on the server has changed.")
    partial.replace(destination)
    return actual


class _Interrupted(Exception):
    def __init__(self, received: int, total: int | None, reason: str) -> None:
        super().__init__(reason)
        self.received, self.total, self.reason = received, total or 0, reason


def _transfer(url: str, partial: Path, *, space_factor: float, timeout: float,
              progress: bool) -> int | None:
    """Append the rest of `url` to `partial`; return the full size when the server announced it."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "clipwidgets"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to fetch: the part file is already complete
            return None
        raise DownloadError(f"{url} answered HTTP {error.code} {error.reason}.") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"Could not connect to {url}: {reason}.") from error
    with response:
        if have and response.status != 206:  # the server ignored Range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        if total is not None:
            check_free_space(partial.parent, int((total - have) + (space_factor - 1.0) * total),
                             what=f"{partial.name[:-5]} ({_gigabytes(total)})")
        received = _append(response, partial, have, total, progress=progress, url=url)
    if total is not None and received < total:
        raise _Interrupted(received, total, "the connection closed early")
    return total


def _append(response: Any, partial: Path, have: int, total: int | None, *, progress: bool, url: str) -> int:
    """Append the response body to `partial`; returns the bytes it then holds. A full disk (also the
    only limit on a stream without Content-Length) is a DatasetError that keeps the partial file."""
    received = have
    try:
        with open(partial, "ab" if have else "wb") as file, _progress_bar(
                total, have, partial.name[:-5], progress) as bar:
            while True:
                try:
                    block = response.read(CHUNK_BYTES)
                except (http.client.HTTPException, OSError) as error:
                    raise _Interrupted(received, total, str(error) or type(error).__name__) from error
                if not block:
                    return received
                file.write(block)
                received += len(block)
                bar.update(len(block))
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        message = (f"The disk holding {partial.parent} filled up after {received:,} bytes of {url} "
                   f"({error.strerror}). Free some space (or choose another data folder) and run the same "
                   f"command again: the partial file {partial} is kept and resumed.")
        raise DatasetError(message) from error


def _progress_bar(total: int | None, initial: int, name: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, disable=not enabled, leave=False)


def _gigabytes(count: float) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"
