"""`clipwidgets search` end to end on the tiny model: text, --image, --like, JSON, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clipwidgets.cli import main


@pytest.fixture(scope="module")
def cli_store(store_factory):
    """6 photos embedded by the tiny model, captions for the first two."""
    return store_factory(images=6, photo_size=(500, 375), texts=["a red ball", "a green tree", "a blue sky"],
                         links=[0, 0, 1], sources=["t"] * 3, name="cli.h5")


def run_json(capsys, *argv: str) -> list[dict]:
    assert main(["search", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_text_query_prints_ranked_json_with_the_store_model(capsys, cli_store):
    records = run_json(capsys, "a red ball - sky", "--store", str(cli_store), "-k", "6")
    assert [r["rank"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) >= {"rank", "path", "score"} for r in records)
    scores = [r["score"] for r in records]
    assert scores == sorted(scores, reverse=True)
    captions = {r["path"]: r.get("captions") for r in records}
    assert captions.pop("photo_00000.jpg") == ["a red ball", "a green tree"]
    assert captions.pop("photo_00001.jpg") == ["a blue sky"]
    assert set(captions.values()) == {None}
    explicit = run_json(capsys, "a red ball - sky", "--store", str(cli_store), "-k", "6", "--model", "tiny")
    assert explicit == records


def test_like_and_image_queries(capsys, cli_store):
    root = cli_store.parent / "images"
    like = run_json(capsys, "--like", "photo_00003.jpg", "--store", str(cli_store), "-k", "2")
    assert like[0]["path"] == "photo_00003.jpg"
    image = run_json(capsys, "--image", str(root / "photo_00003.jpg"), "--store", str(cli_store), "-k", "2")
    assert image[0]["path"] == "photo_00003.jpg"
    combined = run_json(capsys, "a red ball", "--image", str(root / "photo_00003.jpg"), "--store",
                        str(cli_store), "-k", "6", "--min-score", "-1")
    assert len(combined) == 6


def test_options_reach_the_searcher(capsys, cli_store):
    paged = run_json(capsys, "a photo", "--store", str(cli_store), "-k", "2", "--offset", "2")
    assert [r["rank"] for r in paged] == [3, 4]
    captions = run_json(capsys, "a blue sky", "--store", str(cli_store), "--caption-mode", "captions")
    assert [r["path"] for r in captions] == ["photo_00001.jpg", "photo_00000.jpg"]
    globbed = run_json(capsys, "a photo", "--store", str(cli_store), "--glob", "*_0000[45].jpg")
    assert sorted(r["path"] for r in globbed) == ["photo_00004.jpg", "photo_00005.jpg"]


def test_plain_output_is_one_line_per_hit(capsys, cli_store):
    assert main(["search", "a red ball", "--store", str(cli_store), "-k", "3"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1" and lines[0].split()[2].endswith(".jpg")
    assert "3 of 6 results for 'a red ball'" in captured.err


@pytest.mark.parametrize(("argv", "message"), [
    ([], "Nothing to search for"),
    (["dog", "-k", "0"], "positive integer"),
    (["dog", "--like", "photo_00001.jpg"], "without QUERY"),
    (["x:dog"], "must be a positive number"),
    (["- dog"], "at least one positive part"),
    (["--like", "elsewhere.jpg"], "is not in store"),
    (["dog", "--min-score", "3"], "between -1 and 1"),
    (["dog", "--subset", "train"], "not a subset"),
])
def test_bad_input_exits_2_with_a_message(capsys, cli_store, argv, message):
    assert main(["search", *argv, "--store", str(cli_store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_undecodable_image_and_missing_store(capsys, cli_store, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["search", "--image", str(broken), "--store", str(cli_store)]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["search", "dog", "--store", str(tmp_path / "none.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_store_of_another_model(capsys, store_factory, tiny_encoder):
    other = dict(tiny_encoder.meta, name="ViT-B-32-quickgelu", pretrained="openai")
    path = store_factory(images=["a.jpg"], vectors=tiny_encoder.encode_texts(["x"]), meta=other)
    assert main(["search", "dog", "--store", str(path), "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "ViT-B-32-quickgelu/openai" in err and "tiny" in err


def test_command_line_entry_point(cli_store):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "clipwidgets.cli", "search", "a red ball", "--store",
                           str(cli_store), "-k", "2", "--json"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert [record["rank"] for record in json.loads(done.stdout)] == [1, 2]
