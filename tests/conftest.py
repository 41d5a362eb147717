"""Shared fixtures: the offline tiny model and generated images. No test touches the network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_encoder():
    """The offline `tiny` CLIP (random weights, fixed seed), loaded once per test session."""
    from clipwidgets.model import load_model

    return load_model("tiny", device="cpu", precision="fp32")


@pytest.fixture
def photo_dir(tmp_path):
    """A folder of 12 generated 500x375 JPEGs."""
    from clipwidgets.synthetic import make_photos

    folder = tmp_path / "images"
    make_photos(folder, 12)
    return folder
