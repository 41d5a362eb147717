"""The public API: every name in __all__ resolves, and the one-line search is a function."""

from __future__ import annotations

import subprocess
import sys

import pytest

import clipwidgets


def test_every_public_name_resolves():
    for name in clipwidgets.__all__:
        assert getattr(clipwidgets, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        clipwidgets.nope  # noqa: B018


def test_one_line_search_is_the_function_not_the_module(tmp_path, photo_dir, tiny_encoder):
    store_path = tmp_path / "photos.h5"
    clipwidgets.index_images(photo_dir, store_path, tiny_encoder, workers=0, progress=False)
    hits = clipwidgets.search(store_path, "a photo", k=3)
    assert callable(clipwidgets.search)
    assert [hit.rank for hit in hits] == [1, 2, 3]
    assert hits[0].score >= hits[1].score >= hits[2].score


def test_import_is_light():
    code = "import sys, clipwidgets; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
