"""Flickr8k end to end, offline: archives with the real quirks served from 127.0.0.1, then parse,
index with the tiny model, evaluate, and the CLI."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clipwidgets.cli import main
from clipwidgets.datasets import (
    Flickr8kWarning,
    download_flickr8k,
    flickr8k_paths,
    load_captions,
    load_crowdflower_annotations,
    load_expert_annotations,
    load_split,
    make_flickr8k_archives,
    make_flickr8k_like,
)
from clipwidgets.datasets.download import download_file, sha256_of
from clipwidgets.datasets.flickr8k import (
    IMAGES_ARCHIVE,
    TEXT_ARCHIVE,
    TOKEN_FILE,
    index_flickr8k,
    parse_token_file,
)
from clipwidgets.errors import DatasetError
from clipwidgets.store import EmbeddingStore

N_IMAGES = 12


class _ArchiveServer(ThreadingHTTPServer):
    """Serves {name: bytes} with Range support; counts requests; can cut a response after N bytes."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: dict[str, int] = {}
        self.ignore_range = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/releases"

    def requests_for(self, name: str) -> list[str | None]:
        return [byte_range for path, byte_range in self.requests if path.endswith("/" + name)]


class _Handler(BaseHTTPRequestHandler):
    server: _ArchiveServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        byte_range = self.headers.get("Range")
        self.server.requests.append((self.path, byte_range))
        if self.server.ignore_range:
            byte_range = None
        data = self.server.files.get(self.path.rsplit("/", 1)[-1])
        if data is None:
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", byte_range).group(1)) if byte_range else 0
        if start >= len(data):
            self.send_error(416)
            return
        self.send_response(206 if byte_range else 200)
        if byte_range:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cut_after.pop(self.path.rsplit("/", 1)[-1], None)
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Path]:
    return make_flickr8k_archives(tmp_path_factory.mktemp("zips"), n_images=N_IMAGES)


@pytest.fixture
def server(archives):
    httpd = _ArchiveServer({name: path.read_bytes() for name, path in archives.items()})
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _download(data_dir: Path, server: _ArchiveServer, **options):
    return download_flickr8k(data_dir, base_url=server.url, expected_images=N_IMAGES, progress=False,
                             **options)


# ------------------------------------------------------------------------------------------ download


def test_download_extracts_the_real_layout_and_a_second_call_does_nothing(tmp_path, server, archives):
    data = tmp_path / "Data"
    summary = _download(data, server)
    assert summary["status"] == "downloaded" and summary["images"] == N_IMAGES
    paths = flickr8k_paths(data)
    jpegs = sorted(p.name for p in paths.images.iterdir())
    assert len(jpegs) == N_IMAGES and all(re.fullmatch(r"\d+_[0-9a-f]{10}\.jpg", name) for name in jpegs)
    assert not (data / "__MACOSX").exists() and not list(data.rglob("._*"))
    for file in (paths.token, *paths.splits.values(), paths.expert, paths.crowdflower):
        assert file.is_file(), file
    assert not (data / IMAGES_ARCHIVE).exists() and not (data / TEXT_ARCHIVE).exists()
    manifest = json.loads(paths.manifest.read_text())
    for name, archive in archives.items():
        assert manifest["archives"][name]["sha256"] == sha256_of(archive)
    assert len(server.requests) == 2

    again = _download(data, server)
    assert again["status"] == "present" and again["images"] == N_IMAGES
    assert len(server.requests) == 2  # verified against the manifest: no request made


def test_interrupted_transfer_resumes_with_a_range_request(tmp_path, server):
    data = tmp_path / "Data"
    server.cut_after[IMAGES_ARCHIVE] = 5_000
    with pytest.raises(DatasetError, match="stopped at 5,000 of .* run the same command again to resume"):
        _download(data, server, retries=0)
    assert (data / f"{IMAGES_ARCHIVE}.part").stat().st_size == 5_000

    summary = _download(data, server, retries=0)
    assert summary["status"] == "downloaded"
    assert server.requests_for(IMAGES_ARCHIVE) == [None, "bytes=5000-"]
    assert not (data / f"{IMAGES_ARCHIVE}.part").exists()

    retried = tmp_path / "Retried"
    server.cut_after[IMAGES_ARCHIVE] = 7_000
    assert _download(retried, server)["status"] == "downloaded"  # retries resume within one call
    assert server.requests_for(IMAGES_ARCHIVE)[-2:] == [None, "bytes=7000-"]

    server.ignore_range, server.cut_after[IMAGES_ARCHIVE] = True, 6_000
    restarted = tmp_path / "Restarted"
    assert _download(restarted, server)["status"] == "downloaded"  # a server without Range: start over
    assert server.requests_for(IMAGES_ARCHIVE)[-2:] == [None, "bytes=6000-"]


def test_checksum_mismatch_deletes_the_file_and_says_so(tmp_path, server, archives):
    data = tmp_path / "Data"
    with pytest.raises(DatasetError, match="Checksum mismatch .* bad file was deleted"):
        _download(data, server, checksums={IMAGES_ARCHIVE: "0" * 64})
    assert not list(data.glob("Flickr8k_Dataset.zip*"))
    expected = {name: sha256_of(path) for name, path in archives.items()}
    assert _download(data, server, checksums=expected)["status"] == "downloaded"


def test_recorded_checksums_are_enforced_and_damage_is_repaired(tmp_path, server, archives):
    data = tmp_path / "Data"
    _download(data, server)
    image = next(flickr8k_paths(data).images.iterdir())
    original = image.read_bytes()
    image.write_bytes(original[:100])  # a damaged image: the manifest no longer verifies
    assert _download(data, server)["status"] == "downloaded"
    assert image.read_bytes() == original and len(server.requests) == 4

    image.unlink()
    other = make_flickr8k_archives(tmp_path / "other", n_images=N_IMAGES, seed=1)
    server.files[IMAGES_ARCHIVE] = other[IMAGES_ARCHIVE].read_bytes()  # the server's file changed
    with pytest.raises(DatasetError, match="Checksum mismatch"):
        _download(data, server)


def test_too_little_disk_space_is_refused_before_writing(tmp_path, server):
    target = tmp_path / "dl" / IMAGES_ARCHIVE
    with pytest.raises(DatasetError, match="Not enough free disk space .* need about"):
        download_file(f"{server.url}/{IMAGES_ARCHIVE}", target, space_factor=1e12, progress=False)
    assert not list(target.parent.iterdir())
    digest = download_file(f"{server.url}/{IMAGES_ARCHIVE}", target, progress=False)
    assert digest == sha256_of(target) and target.stat().st_size == len(server.files[IMAGES_ARCHIVE])


def test_offline_error_names_both_urls_and_the_manual_route(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: connections are refused
    base = f"http://127.0.0.1:{port}/x"
    with pytest.raises(DatasetError) as caught:
        download_flickr8k(tmp_path / "Data", base_url=base, progress=False)
    message = str(caught.value)
    assert f"{base}/{IMAGES_ARCHIVE}" in message and f"{base}/{TEXT_ARCHIVE}" in message
    assert "--from-dir" in message


def test_base_url_from_the_environment(tmp_path, server, monkeypatch):
    monkeypatch.setenv("CLIPWIDGETS_FLICKR8K_URL", server.url)
    summary = download_flickr8k(tmp_path / "Data", expected_images=N_IMAGES, progress=False)
    assert summary["archives"][IMAGES_ARCHIVE]["source"] == f"{server.url}/{IMAGES_ARCHIVE}"


def test_from_dir_extracts_without_touching_the_archives(tmp_path, archives):
    data = tmp_path / "Data"
    summary = download_flickr8k(data, from_dir=archives[IMAGES_ARCHIVE].parent, expected_images=N_IMAGES,
                                progress=False)
    assert summary["status"] == "extracted"
    assert all(path.is_file() for path in archives.values())
    with pytest.raises(DatasetError, match="holds 12 JPEGs, expected 8091"):
        download_flickr8k(tmp_path / "Other", from_dir=archives[IMAGES_ARCHIVE].parent, progress=False)


def test_unsafe_and_damaged_archives_are_refused(tmp_path, archives):
    evil = tmp_path / "evil"
    evil.mkdir()
    shutil.copy(archives[TEXT_ARCHIVE], evil / TEXT_ARCHIVE)
    with zipfile.ZipFile(evil / IMAGES_ARCHIVE, "w") as zipped:
        zipped.writestr("Flicker8k_Dataset/ok.jpg", b"x")
        zipped.writestr("Flicker8k_Dataset/../../escaped.jpg", b"x")
    with pytest.raises(DatasetError, match="outside the data folder"):
        download_flickr8k(tmp_path / "a" / "Data", from_dir=evil, progress=False)
    assert not list(tmp_path.rglob("escaped.jpg")) and not (tmp_path / "a" / "Data" / "Images").exists()

    damaged = bytearray(archives[IMAGES_ARCHIVE].read_bytes())
    damaged[damaged.index(b"\xff\xd8\xff") + 200] ^= 0xFF  # a flipped byte inside the first JPEG
    (evil / IMAGES_ARCHIVE).write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match="fails the CRC check"):
        download_flickr8k(tmp_path / "b" / "Data", from_dir=evil, progress=False)

    (evil / IMAGES_ARCHIVE).write_bytes(b"<html>rate limited</html>")
    with pytest.raises(DatasetError, match="not a readable zip"):
        download_flickr8k(tmp_path / "c" / "Data", from_dir=evil, progress=False)


# ------------------------------------------------------------------------------------------- parsing

_REAL_SHAPED_TOKENS = (
    "1000268201_693b08cb0e.jpg#1\tA girl going into a wooden building .\r\n"
    "1000268201_693b08cb0e.jpg#0\tA child in a pink dress is climbing up a set of stairs .\r\n"
    "1000268201_693b08cb0e.jpg#2\tA little girl climbing into a wooden playhouse .\r\n"
    "\r\n"
    "2258277193_586949ec62.jpg.1#0\tA man is sitting on a bench .\r\n"
    "2258277193_586949ec62.jpg.1#1\tA person rests on a park bench .\r\n"
    "this line is not a caption\r\n"
    "1001773457_577c3a7d70.jpg#0\tA black dog and a spotted dog are fighting\r\n"
)


def test_load_captions_handles_the_real_quirks(tmp_path):
    token = tmp_path / TOKEN_FILE
    token.write_bytes(_REAL_SHAPED_TOKENS.encode())
    expected = r"line 7: expected .*2258277193_586949ec62\.jpg\.1' names no image"
    with pytest.warns(Flickr8kWarning, match=expected):
        captions = load_captions(token)
    assert list(captions) == ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"]
    assert captions["1000268201_693b08cb0e.jpg"] == [
        "A child in a pink dress is climbing up a set of stairs .",
        "A girl going into a wooden building .",
        "A little girl climbing into a wooden playhouse ."]
    issues: list[str] = []
    assert load_captions(token, issues=issues) == captions
    assert issues == [
        "Flickr8k.token.txt line 7: expected <image>.jpg#<n><TAB><caption>, got 'this line is not a caption'",
        "Flickr8k.token.txt lines 5-6: the group '2258277193_586949ec62.jpg.1' names no image (not a .jpg "
        "file name); its 2 captions were dropped"]
    assert parse_token_file(token, issues=[])["1000268201_693b08cb0e.jpg"][2].startswith("A little girl")


def test_generated_collection_has_the_real_counts_per_image(tmp_path):
    paths = make_flickr8k_like(tmp_path / "Data", n_images=N_IMAGES)
    issues: list[str] = []
    captions = load_captions(paths.token, issues=issues)
    assert len(captions) == N_IMAGES and all(len(group) == 5 for group in captions.values())
    assert len(issues) == 1 and ".jpg.1' names no image" in issues[0]
    assert paths.token.read_bytes().count(b"\r\n") == 5 * (N_IMAGES + 1)
    splits = {name: load_split(file) for name, file in paths.splits.items()}
    assert {name: len(names) for name, names in splits.items()} == {"train": 7, "dev": 2, "test": 2}
    assert set().union(*splits.values()) <= set(captions)


def test_split_and_annotation_files_report_bad_lines_by_number(tmp_path):
    split = tmp_path / "Flickr_8k.testImages.txt"
    split.write_bytes(b"1000268201_693b08cb0e.jpg\r\n1001773457_577c3a7d70.jpg\r\nnot an image\r\n"
                      b"1000268201_693b08cb0e.jpg\r\n")
    with pytest.warns(Flickr8kWarning, match="line 3: 'not an image' is not an image file name; line 4: "):
        assert load_split(split) == ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"]

    expert = tmp_path / "ExpertAnnotations.txt"
    expert.write_text("1056338697_4f7d7ce270.jpg\t2549968784_39bfbe44f9.jpg#2\t1\t1\t1\n"
                      "1056338697_4f7d7ce270.jpg\t3360930596_1e75164ce6.jpg#0\t4\t3\t5\n"
                      "1056338697_4f7d7ce270.jpg\t3360930596_1e75164ce6.jpg\t4\t3\t3\n")
    issues: list[str] = []
    rows = load_expert_annotations(expert, issues=issues)
    assert [(r.caption_id, r.scores, r.mean_score) for r in rows] == [
        ("2549968784_39bfbe44f9.jpg#2", (1, 1, 1), 1.0)]
    assert [issue.split(":")[0] for issue in issues] == ["ExpertAnnotations.txt line 2",
                                                         "ExpertAnnotations.txt line 3"]

    crowd = tmp_path / "CrowdFlowerAnnotations.txt"
    crowd.write_text("1056338697_4f7d7ce270.jpg\t114051287_dd85625a04.jpg#2\t0.0\t0\t3\n"
                     "1056338697_4f7d7ce270.jpg\t1056338697_4f7d7ce270.jpg#0\t1.0\t3\t0\n")
    rows = load_crowdflower_annotations(crowd)
    assert [(r.percent_yes, r.yes, r.no) for r in rows] == [(0.0, 0, 3), (1.0, 3, 0)]


def test_wrong_or_missing_files_get_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist. Run `clipwidgets flickr8k download"):
        load_captions(tmp_path / TOKEN_FILE)
    not_tokens = tmp_path / "notes.txt"
    not_tokens.write_text("hello\nworld\n")
    with pytest.raises(DatasetError, match="not a Flickr8k token file"):
        load_captions(not_tokens)


# ---------------------------------------------------------------------------------- index, evaluate


def test_index_links_every_caption_to_its_image_and_records_the_splits(tmp_path, tiny_encoder):
    paths = make_flickr8k_like(tmp_path / "Data", n_images=N_IMAGES)
    store_path = tmp_path / "store" / "flickr8k.h5"
    summary = index_flickr8k(paths.data_dir, store_path, tiny_encoder, workers=0, progress=False)
    assert summary["images"] == N_IMAGES and summary["captions_added"] == 5 * N_IMAGES
    assert summary["subsets"] == {"train": 7, "dev": 2, "test": 2}
    assert any(".jpg.1' names no image" in issue for issue in summary["issues"])
    captions = load_captions(paths.token, issues=[])
    with EmbeddingStore.open(store_path) as store:
        assert store.num_texts == 5 * N_IMAGES
        images = store.image_paths()
        links = zip(store.texts(), store.text_image_index(), store.text_sources(), strict=True)
        for text, row, source in links:
            number = int(source.removeprefix("flickr8k#"))
            assert captions[images[row]][number] == text
        assert sorted(images[i] for i in store.subsets()["test"]) == sorted(load_split(paths.splits["test"]))

    again = index_flickr8k(paths.data_dir, store_path, tiny_encoder, workers=0, progress=False)
    assert again["captions_added"] == 0 and again["images_indexed"] == 0 and again["captions"] == 5 * N_IMAGES


def test_cli_download_index_evaluate(tmp_path, archives, capsys):
    data, store = tmp_path / "Data", tmp_path / "store" / "flickr8k.h5"
    zips = str(archives[IMAGES_ARCHIVE].parent)
    assert main(["flickr8k", "download", "--data-dir", str(data), "--from-dir", zips,
                 "--expected-images", str(N_IMAGES)]) == 0
    assert "extracted into" in capsys.readouterr().out
    assert main(["flickr8k", "download", "--data-dir", str(data), "--from-dir", zips,
                 "--expected-images", str(N_IMAGES)]) == 0
    assert "nothing to do" in capsys.readouterr().out

    assert main(["flickr8k", "index", "--data-dir", str(data), "--store", str(store), "--model", "tiny",
                 "--workers", "0", "--json"]) == 0
    indexed = json.loads(capsys.readouterr().out)
    assert indexed["images"] == N_IMAGES and indexed["captions"] == 5 * N_IMAGES

    assert main(["flickr8k", "evaluate", "--store", str(store), "--data-dir", str(data), "--split", "all",
                 "--failures", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == N_IMAGES and report["captions"] == 5 * N_IMAGES
    for direction in ("text_to_image", "image_to_text"):
        recall = report[direction]["recall"]
        assert 0.0 <= recall["R@1"] <= recall["R@5"] <= recall["R@10"] <= 100.0
        assert report[direction]["median_rank"] >= 1.0
    assert report["agreement"]["pairs"] == 8 and -100.0 <= report["agreement"]["tau_c"] <= 100.0
    assert len(report["failures"]) == 2 and report["failures"][0]["ground_truth_rank"] > 1

    assert main(["flickr8k", "evaluate", "--store", str(store), "--data-dir", str(data)]) == 0
    table = capsys.readouterr().out
    assert "split 'test': 2 images, 10 captions" in table and "text -> image" in table
    assert main(["flickr8k", "evaluate", "--store", str(store), "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err
