"""The CLI's output never dies on file names that are not valid UTF-8 (issue 18 item 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clipwidgets.store import EmbeddingStore

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="byte file names are a POSIX feature")


@pytest.fixture
def folder_with_bad_name(tmp_path):
    """Three generated photos, one of them named with bytes that are not UTF-8 (Latin-1 'é')."""
    from clipwidgets.synthetic import make_photo

    folder = tmp_path / "images"
    folder.mkdir()
    make_photo(0).save(folder / "plain.jpg")
    make_photo(1).save(folder / "caf\u00e9.jpg")
    bad = os.path.join(os.fsencode(folder), b"caf\xe9-latin1.jpg")
    make_photo(2).save(bad, format="JPEG")
    return folder


def run_cli(*args, **env):
    environment = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8",
                   "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "clipwidgets.cli", *args], capture_output=True,
                          env=environment, timeout=300)


@pytest.mark.parametrize("encoding", ["utf-8:strict", "ascii:strict"])
def test_index_prints_a_non_utf8_name_and_json_survives(folder_with_bad_name, tmp_path, encoding):
    store = tmp_path / "s.h5"
    common = [str(folder_with_bad_name), "--store", str(store), "--model", "tiny", "--workers", "0"]
    result = run_cli("index", *common, "--json", PYTHONIOENCODING=encoding)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["indexed"] == 2 and summary["skipped"] == 1
    (skipped,) = summary["skipped_files"]
    assert os.fsencode(skipped["path"]) == b"caf\xe9-latin1.jpg"  # the exact bytes come back
    assert "UTF-8" in skipped["reason"]
    with EmbeddingStore.open(store) as opened:
        assert opened.num_images == 2
    again = run_cli("index", *common, PYTHONIOENCODING=encoding)  # text output, a second run
    assert again.returncode == 0, again.stderr.decode(errors="replace")
    assert b"Traceback" not in again.stderr
    assert b"skipped caf\\xe9-latin1.jpg" in again.stdout or b"skipped caf\\udce9-latin1.jpg" in again.stdout
