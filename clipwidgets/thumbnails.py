"""Small JPEG thumbnails of a store's images, made on demand and cached in memory and on disk.

Files are only ever reached through `store.abspath()`, which keeps every read inside the
store's image root. A cached thumbnail is keyed by the file's path, size and modification time,
so an edited original gets a fresh thumbnail.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw

from .errors import ImageDecodeError
from .images import make_thumbnail
from .types import StoreReader

__all__ = [
    "CacheStats", "DEFAULT_QUALITY", "DEFAULT_SIDE", "ThumbnailCache", "disk_cache_dir", "placeholder_jpeg"
]

DEFAULT_SIDE = 160
DEFAULT_QUALITY = 75


@dataclass
class CacheStats:
    """How thumbnails were served: from memory, from the disk cache, or made from the original."""

    memory_hits: int = 0
    disk_hits: int = 0
    made: int = 0


class ThumbnailCache:
    """JPEG thumbnails of the images of `store`: an in-memory LRU plus an optional folder on disk."""

    def __init__(self, store: StoreReader, *, max_side: int = DEFAULT_SIDE, quality: int = DEFAULT_QUALITY,
                 max_bytes: int = 64 * 2**20, disk_dir: str | os.PathLike[str] | None = None) -> None:
        self.store = store
        self.max_side = max_side
        self.quality = quality
        self.max_bytes = max_bytes
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.stats = CacheStats()
        self._memory: OrderedDict[tuple, bytes] = OrderedDict()
        self._memory_bytes = 0

    def get(self, index_or_relpath: int | str, *, max_side: int | None = None) -> bytes:
        """The JPEG bytes of one image's thumbnail; raises ImageDecodeError when it cannot be made."""
        side = max_side or self.max_side
        path = self.store.abspath(index_or_relpath)
        try:
            stat = path.stat()
        except OSError as error:
            raise ImageDecodeError(f"Image {str(path)!r} cannot be read ({error.strerror or error}); "
                                   "it was moved or deleted after indexing: re-run indexing to "
                                   "update the store.") from error
        key = (str(path), stat.st_size, stat.st_mtime_ns, side, self.quality)
        data = self._memory.get(key)
        if data is not None:
            self._memory.move_to_end(key)
            self.stats.memory_hits += 1
            return data
        data = self._read_disk(key)
        if data is not None:
            self.stats.disk_hits += 1
        else:
            data = make_thumbnail(path, max_side=side, quality=self.quality)
            self.stats.made += 1
            self._write_disk(key, data)
        self._remember(key, data)
        return data

    def clear(self) -> None:
        """Forget the in-memory thumbnails (the disk cache stays)."""
        self._memory.clear()
        self._memory_bytes = 0

    def _remember(self, key: tuple, data: bytes) -> None:
        self._memory[key] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > self.max_bytes and len(self._memory) > 1:
            _, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= len(dropped)

    def _disk_path(self, key: tuple) -> Path | None:
        if self.disk_dir is None:
            return None
        digest = hashlib.sha1("\0".join(map(str, key)).encode("utf-8")).hexdigest()
        return self.disk_dir / digest[:2] / f"{digest}.jpg"

    def _read_disk(self, key: tuple) -> bytes | None:
        path = self._disk_path(key)
        if path is None:
            return None
        try:
            return path.read_bytes() or None  # an empty file (a crash mid-write elsewhere) is a miss
        except OSError:
            return None

    def _write_disk(self, key: tuple, data: bytes) -> None:
        """Store a thumbnail atomically; a read-only or full disk only costs the speed-up.

        The bytes go to a temporary file that is renamed into place once complete. When a write
        fails (ENOSPC, a quota, a file-size limit) the temporary file is removed, and so is the
        subfolder made for it if it is still empty: a failed write leaves nothing behind.
        """
        path = self._disk_path(key)
        if path is None:
            return
        temporary: str | None = None
        made_folder = not path.parent.is_dir()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except OSError:
            _remove_quietly(temporary, path.parent if made_folder else None)


def _remove_quietly(file: str | None, folder: Path | None) -> None:
    """Remove a temporary file and an empty folder left by a failed write; never raises."""
    try:
        if file is not None:
            os.unlink(file)
        if folder is not None:
            folder.rmdir()
    except OSError:
        pass


def disk_cache_dir(store_path: str | os.PathLike[str]) -> Path:
    """The thumbnail folder kept next to a store file: `<store>.thumbs/`."""
    return Path(f"{os.fspath(store_path)}.thumbs")


@lru_cache(maxsize=8)
def placeholder_jpeg(max_side: int = DEFAULT_SIDE) -> bytes:
    """A grey, crossed-out square shown in place of an image that cannot be decoded."""
    image = Image.new("RGB", (max_side, max_side), (225, 225, 225))
    draw = ImageDraw.Draw(image)
    draw.line((0, 0, max_side, max_side), fill=(170, 170, 170), width=3)
    draw.line((0, max_side, max_side, 0), fill=(170, 170, 170), width=3)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=60)
    return buffer.getvalue()
