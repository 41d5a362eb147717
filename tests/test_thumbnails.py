"""The thumbnail cache on a full disk: no partial or temporary files, the thumbnail still served."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from clipwidgets.store import EmbeddingStore
from clipwidgets.synthetic import make_photos


@pytest.fixture
def store_path(tmp_path, tiny_encoder):
    """A store of 3 generated photos (random unit embeddings: thumbnails need no model)."""
    images = tmp_path / "images"
    paths = make_photos(images, 3)
    vectors = np.random.default_rng(0).standard_normal((3, tiny_encoder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = EmbeddingStore.create(tmp_path / "photos.h5", tiny_encoder.meta, images)
    stats = [os.stat(path) for path in paths]
    store.add_images([os.path.basename(path) for path in paths], vectors,
                     sizes=[s.st_size for s in stats], mtimes_ns=[s.st_mtime_ns for s in stats],
                     widths=[500] * 3, heights=[375] * 3)
    store.close()
    return tmp_path / "photos.h5"


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


FILL_AND_GET = textwrap.dedent("""
    import resource, signal, sys
    from clipwidgets.store import EmbeddingStore
    from clipwidgets.thumbnails import ThumbnailCache
    store = EmbeddingStore.open(sys.argv[1])
    cache = ThumbnailCache(store, disk_dir=sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
    first = cache.get(0)
    again = cache.get(0)
    assert first == again and first[:2] == b"\\xff\\xd8", "not the same JPEG"
    print(cache.stats.made, cache.stats.memory_hits, len(first))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE on Linux")
@pytest.mark.parametrize("limit", [0, 300])
def test_write_failure_leaves_no_files_and_serves_from_memory(store_path, tmp_path, limit):
    """A file-size limit makes every write past `limit` bytes fail, as a full disk does."""
    disk = tmp_path / "thumbs"
    result = subprocess.run([sys.executable, "-c", FILL_AND_GET, str(store_path), str(disk), str(limit)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    made, memory_hits, size = map(int, result.stdout.split())
    assert (made, memory_hits) == (1, 1) and size > limit
    assert files_under(disk) == []  # no zero-byte, partial or temporary file


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 64 KiB tmpfs filled to the last byte (needs root; skipped elsewhere)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mount / "thumbs").mkdir()
        filler = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(filler, b"\0" * 512):
                pass
        except OSError:  # ENOSPC: the disk is full
            pass
        finally:
            os.close(filler)
        yield mount / "thumbs"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_leaves_no_files_and_serves_from_memory(store_path, full_tmpfs):
    from clipwidgets.thumbnails import ThumbnailCache

    with EmbeddingStore.open(store_path) as store:
        cache = ThumbnailCache(store, disk_dir=full_tmpfs)
        first = cache.get(1)
        assert cache.get(1) == first and first[:2] == b"\xff\xd8"
    assert (cache.stats.made, cache.stats.memory_hits) == (1, 1)
    assert files_under(full_tmpfs) == []


def test_empty_cached_file_is_a_miss_and_is_rewritten(store_path, tmp_path):
    from clipwidgets.thumbnails import ThumbnailCache

    disk = tmp_path / "thumbs"
    with EmbeddingStore.open(store_path) as store:
        first = ThumbnailCache(store, disk_dir=disk).get(2)
        (cached,) = [disk / name for name in files_under(disk)]
        cached.write_bytes(b"")
        fresh = ThumbnailCache(store, disk_dir=disk)
        assert fresh.get(2) == first and fresh.stats.made == 1
    assert cached.read_bytes() == first
