"""notebook_env: the repository root, environment overrides and Colab detection the notebooks rely on."""

from __future__ import annotations

import socket
import sys
import types
from pathlib import Path

import pytest

from clipwidgets.errors import DatasetError
from clipwidgets.notebook_env import (
    ensure_flickr8k,
    ensure_store,
    find_repo_root,
    in_colab,
    is_repo_root,
    notebook_config,
)

REPO = Path(__file__).resolve().parents[1]


def make_checkout(folder: Path) -> Path:
    (folder / "clipwidgets").mkdir(parents=True)
    (folder / "clipwidgets" / "__init__.py").write_text("")
    (folder / "NoteBooks").mkdir()
    (folder / "pyproject.toml").write_text("[project]\nname = 'clipwidgets'\n")
    return folder


def test_repo_root_comes_from_the_package_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_repo_root() == REPO
    assert is_repo_root(REPO)


def test_installed_package_finds_the_checkout_above_the_working_directory(tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    site_packages = tmp_path / "site-packages" / "clipwidgets"
    site_packages.mkdir(parents=True)
    assert find_repo_root(package_dir=site_packages, cwd=checkout / "NoteBooks") == checkout


def test_installed_package_outside_any_checkout_uses_the_working_directory(tmp_path):
    site_packages = tmp_path / "site-packages" / "clipwidgets"
    site_packages.mkdir(parents=True)
    content = tmp_path / "content"
    content.mkdir()
    assert find_repo_root(package_dir=site_packages, cwd=content) == content.resolve()


def test_a_folder_missing_a_marker_is_not_a_checkout(tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    (checkout / "NoteBooks").rmdir()
    assert not is_repo_root(checkout)


def test_defaults_are_the_real_model_and_the_repo_data_and_store(tmp_path):
    config = notebook_config({}, repo_root=tmp_path)
    assert config.model == "ViT-B-32-quickgelu"
    assert config.pretrained == "openai"
    assert not config.tiny
    assert config.data_dir == tmp_path / "Data"
    assert config.images_dir == tmp_path / "Data" / "Images"
    assert config.store_path == tmp_path / "store" / "flickr8k.h5"


def test_environment_overrides_model_data_and_store(tmp_path):
    environ = {"CLIPWIDGETS_MODEL": "tiny", "CLIPWIDGETS_PRETRAINED": "laion2b_s34b_b79k",
               "CLIPWIDGETS_DATA": str(tmp_path / "generated"), "CLIPWIDGETS_STORE": str(tmp_path / "s.h5")}
    config = notebook_config(environ, repo_root=REPO)
    assert config.tiny
    assert config.pretrained is None  # the tiny model has no weights to name
    assert config.data_dir == tmp_path / "generated"
    assert config.store_path == tmp_path / "s.h5"


def test_relative_paths_resolve_from_the_repo_and_blank_values_mean_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    environ = {"CLIPWIDGETS_DATA": "elsewhere/flickr", "CLIPWIDGETS_STORE": "  ",
               "CLIPWIDGETS_MODEL": "", "CLIPWIDGETS_PRETRAINED": "my.pt"}
    config = notebook_config(environ, repo_root=REPO)
    assert config.data_dir == REPO / "elsewhere" / "flickr"
    assert config.store_path == REPO / "store" / "flickr8k.h5"
    assert (config.model, config.pretrained) == ("ViT-B-32-quickgelu", "my.pt")


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = notebook_config({"CLIPWIDGETS_DATA": "~/flickr"}, repo_root=REPO)
    assert config.data_dir == tmp_path / "flickr"


def test_reads_os_environ_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPWIDGETS_STORE", str(tmp_path / "from-env.h5"))
    assert notebook_config().store_path == tmp_path / "from-env.h5"


def test_colab_is_detected_from_the_loaded_modules(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert not in_colab()
    assert not notebook_config({}).colab
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert in_colab()
    assert notebook_config({}).colab


def test_describe_shows_paths_inside_the_repo_relative_and_others_absolute(tmp_path):
    config = notebook_config({"CLIPWIDGETS_MODEL": "tiny", "CLIPWIDGETS_STORE": str(tmp_path / "s.h5")},
                             repo_root=REPO)
    lines = config.describe().splitlines()
    assert lines[0] == "model:  tiny (random weights, offline test model)"
    assert lines[1] == "data:   Data"
    assert lines[2] == f"store:  {tmp_path / 's.h5'}"


def test_a_complete_generated_collection_is_used_as_it_is(tmp_path):
    from clipwidgets.datasets import make_flickr8k_like

    make_flickr8k_like(tmp_path / "data", n_images=8)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    config = notebook_config({"CLIPWIDGETS_DATA": str(tmp_path / "data")}, repo_root=REPO)
    assert ensure_flickr8k(config, progress=False) == "present"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_missing_data_is_downloaded_and_offline_says_where_from(tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on: the connection is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CLIPWIDGETS_FLICKR8K_URL", f"http://127.0.0.1:{port}/flickr8k")
    config = notebook_config({"CLIPWIDGETS_DATA": str(tmp_path / "empty")}, repo_root=REPO)
    with pytest.raises(DatasetError, match=f"127.0.0.1:{port}/flickr8k/Flickr8k_Dataset.zip"):
        ensure_flickr8k(config, progress=False)


def test_ensure_store_builds_a_missing_store_once(tmp_path, tiny_encoder):
    from clipwidgets.datasets import make_flickr8k_like
    from clipwidgets.store import EmbeddingStore

    make_flickr8k_like(tmp_path / "data", n_images=6)
    config = notebook_config({"CLIPWIDGETS_MODEL": "tiny", "CLIPWIDGETS_DATA": str(tmp_path / "data"),
                              "CLIPWIDGETS_STORE": str(tmp_path / "store" / "f.h5")}, repo_root=REPO)
    summary = ensure_store(config, tiny_encoder, progress=False)
    assert (summary["images"], summary["captions"]) == (6, 30)
    assert ensure_store(config, tiny_encoder, progress=False) is None
    with EmbeddingStore.open(config.store_path) as store:
        assert store.num_images == 6
