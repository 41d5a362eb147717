"""Flickr8k downloads that go wrong (issue 18 item 4): corrupt deflate data, members that clash with the
image folder, zip bombs, streams without Content-Length and full disks. Archives are served from
127.0.0.1; small crafted zips stand in for the broken ones."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clipwidgets.cli import main
from clipwidgets.datasets import download_flickr8k, make_flickr8k_archives
from clipwidgets.datasets.download import download_file
from clipwidgets.datasets.flickr8k import IMAGES_ARCHIVE, TEXT_ARCHIVE, TOKEN_FILE
from clipwidgets.errors import DatasetError

N_IMAGES = 6


class _Server(ThreadingHTTPServer):
    """Serves {name: bytes}; `announce_length=False` streams without a Content-Length header."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.announce_length = True
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/f"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # without a length, the end of the body is the end of the connection

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        name = self.path.rsplit("/", 1)[-1]
        self.server.requests.append(name)
        data = self.server.files.get(name)
        if data is None or self.headers.get("Range"):
            self.send_error(404 if data is None else 416)
            return
        self.send_response(200)
        if self.server.announce_length:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("zips")
    archives = make_flickr8k_archives(folder, n_images=N_IMAGES)
    return {name: path.read_bytes() for name, path in archives.items()}


@pytest.fixture
def server(good):
    httpd = _Server(dict(good))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def download(data_dir: Path, server: _Server):
    return download_flickr8k(data_dir, base_url=server.url, expected_images=N_IMAGES, progress=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.name.endswith((".tmp", ".part")))


def corrupt_deflate(archive: bytes, member: str) -> bytes:
    """`archive` with the first byte of `member`'s deflate stream set to a reserved block type."""
    with zipfile.ZipFile(_bytes_file(archive)) as zipped:
        info = zipped.getinfo(member)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    header = info.header_offset
    name_length, extra_length = struct.unpack("<HH", archive[header + 26: header + 30])
    start = header + 30 + name_length + extra_length
    return archive[:start] + b"\xff" + archive[start + 1:]


def _bytes_file(data: bytes):
    import io

    return io.BytesIO(data)


def rezip(archive: bytes, extra: dict[str, bytes], *, method=zipfile.ZIP_STORED) -> bytes:
    """A copy of `archive` with the members of `extra` added."""
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(_bytes_file(archive)) as source, zipfile.ZipFile(out, "w", method) as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        for name, data in extra.items():
            target.writestr(name, data)
    return out.getvalue()


# ------------------------------------------------------------------------------ damaged compressed data


def test_corrupt_deflate_is_refused_deleted_and_a_retry_downloads_afresh(tmp_path, server, good):
    server.files[TEXT_ARCHIVE] = corrupt_deflate(good[TEXT_ARCHIVE], TOKEN_FILE)
    data = tmp_path / "Data"
    with pytest.raises(DatasetError, match=r"Flickr8k_text\.zip was refused: .*damaged.*download it afresh"):
        download(data, server)
    assert not (data / TEXT_ARCHIVE).exists() and leftovers(data) == []
    server.files[TEXT_ARCHIVE] = good[TEXT_ARCHIVE]  # the mirror is fixed
    assert download(data, server)["status"] == "downloaded"
    assert server.requests.count(TEXT_ARCHIVE) == 2


def test_cli_reports_corrupt_archive_with_status_2(tmp_path, good, capsys):
    folder = tmp_path / "zips"
    folder.mkdir()
    (folder / IMAGES_ARCHIVE).write_bytes(good[IMAGES_ARCHIVE])
    (folder / TEXT_ARCHIVE).write_bytes(corrupt_deflate(good[TEXT_ARCHIVE], TOKEN_FILE))
    status = main(["flickr8k", "download", "--data-dir", str(tmp_path / "Data"), "--from-dir", str(folder),
                   "--expected-images", str(N_IMAGES)])
    assert status == 2
    assert "refused" in capsys.readouterr().err
    assert (folder / TEXT_ARCHIVE).exists()  # an archive given by hand is never deleted


# ------------------------------------------------------------------------- members that clash with the layout


@pytest.mark.parametrize("archive, member", [(IMAGES_ARCHIVE, "Flicker8k_Dataset"),
                                             (TEXT_ARCHIVE, "Images"), (TEXT_ARCHIVE, "texts/Images"),
                                             (TEXT_ARCHIVE, ".flickr8k.json")])
def test_member_clashing_with_the_layout_is_refused_without_leftovers(tmp_path, server, good, archive,
                                                                      member):
    server.files[archive] = rezip(good[archive], {member: b"not what it seems\n"})
    data = tmp_path / "Data"
    pattern = f"{archive.replace('.', '[.]')} was refused: .*{member.split('/')[-1]}"
    with pytest.raises(DatasetError, match=pattern):
        download(data, server)
    assert leftovers(data) == [] and not (data / archive).exists()
    assert not (data / "Images").is_file()


def test_folder_in_the_way_of_an_image_is_a_clear_error(tmp_path, good):
    folder = tmp_path / "zips"
    folder.mkdir()
    for name, data in good.items():
        (folder / name).write_bytes(data)
    with zipfile.ZipFile(folder / IMAGES_ARCHIVE) as zipped:
        first = next(name for name in zipped.namelist() if name.endswith(".jpg"))
    data = tmp_path / "Data"
    (data / "Images" / Path(first).name).mkdir(parents=True)
    with pytest.raises(DatasetError, match="is a folder"):
        download_flickr8k(data, from_dir=folder, expected_images=N_IMAGES, progress=False)
    assert leftovers(data) == []


# --------------------------------------------------------------------------------- space on disk


def zip_bomb(good: dict[str, bytes], megabytes: int) -> bytes:
    """The image archive plus a member of `megabytes` MB of zeros (it compresses about 1000:1)."""
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(_bytes_file(good[IMAGES_ARCHIVE])) as source, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        with target.open("Flicker8k_Dataset/zeros.jpg", "w", force_zip64=True) as member:
            for _ in range(megabytes):
                member.write(bytes(1 << 20))
    return out.getvalue()


def test_zip_bomb_is_refused_by_its_uncompressed_size(tmp_path, server, good, monkeypatch):
    """Free space is checked against what extraction writes, not the archive's size."""
    from clipwidgets.datasets import download as download_module

    server.files[IMAGES_ARCHIVE] = zip_bomb(good, 64)
    assert len(server.files[IMAGES_ARCHIVE]) < 2 << 20
    real = shutil.disk_usage
    monkeypatch.setattr(download_module.shutil, "disk_usage",  # a disk with 16 MB free
                        lambda path: real(path)._replace(free=16 * 10**6))
    data = tmp_path / "Data"
    pattern = r"Not enough free disk space .*uncompressed sizes.*need about 6\d\.\d MB"
    with pytest.raises(DatasetError, match=pattern):
        download(data, server)
    assert not (data / "Images").exists() or not any((data / "Images").iterdir())


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root; skipped elsewhere)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_zip_bomb_on_a_small_disk_is_refused_before_writing(small_disk, server, good):
    server.files[IMAGES_ARCHIVE] = zip_bomb(good, 8)
    with pytest.raises(DatasetError, match="Not enough free disk space"):
        download(small_disk / "Data", server)
    assert leftovers(small_disk) == [] and not list((small_disk / "Data").glob("Images/*"))


def test_stream_without_length_filling_the_disk_is_a_clear_error(small_disk, server):
    server.announce_length = False
    server.files["big.zip"] = os.urandom(3 << 20)
    target = small_disk / "dl" / "big.zip"
    with pytest.raises(DatasetError, match=r"filled up after .* bytes .*partial file .* is kept"):
        download_file(f"{server.url}/big.zip", target, progress=False)
    assert not target.exists()


def test_stream_without_length_downloads(tmp_path, server, good):
    server.announce_length = False
    assert download(tmp_path / "Data", server)["status"] == "downloaded"
