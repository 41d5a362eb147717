"""AVIF (Pillow's codec) and HEIC/HEIF (pillow-heif): found by scanning, decoded in the indexer's worker
processes, and skipped with the package to install when the codec is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from clipwidgets import image_formats
from clipwidgets.errors import ImageDecodeError
from clipwidgets.images import load_image, scan_images
from clipwidgets.indexing import index_images
from clipwidgets.synthetic import make_photo

pillow_heif = pytest.importorskip("pillow_heif")
needs_avif = pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")


def write(folder, name, size=(120, 80), seed=0):
    """Save a generated photo as `name` (the format follows the extension); returns the pixels."""
    image = make_photo(seed, size)
    image.save(folder / name, {".avif": "AVIF", ".heic": "HEIF", ".heif": "HEIF"}[Path(name).suffix.lower()],
               quality=90)
    return np.asarray(image, dtype=np.float32)


@pytest.fixture
def phone_photos(tmp_path):
    folder = tmp_path / "phone"
    folder.mkdir()
    pixels = {"a.heic": write(folder, "a.heic", seed=1), "b.HEIF": write(folder, "b.HEIF", seed=2)}
    if features.check("avif"):
        pixels["c.avif"] = write(folder, "c.avif", seed=3)
    make_photo(4).save(folder / "d.jpg")
    return folder, pixels


def test_scan_finds_avif_and_heic(phone_photos):
    folder, pixels = phone_photos
    found = scan_images(folder)
    assert set(pixels) | {"d.jpg"} == set(found)


def test_heic_and_avif_decode_to_the_same_picture(phone_photos):
    folder, pixels = phone_photos
    for name, expected in pixels.items():
        image = load_image(folder / name)
        assert image.mode == "RGB" and image.size == (120, 80), name
        # lossy codecs: close, not equal
        assert np.abs(np.asarray(image, dtype=np.float32) - expected).mean() < 12, name


def test_worker_processes_decode_heic_and_avif(phone_photos, tmp_path, tiny_encoder):
    folder, pixels = phone_photos
    report = index_images(folder, tmp_path / "s.h5", tiny_encoder, workers=1, progress=False)
    assert report.skipped_files == []
    assert report.indexed == len(pixels) + 1


def test_missing_heif_codec_names_the_package(phone_photos, monkeypatch):
    folder, _ = phone_photos
    monkeypatch.setattr(image_formats, "_HEIF", False)
    monkeypatch.setattr(Image, "ID", [name for name in Image.ID if name != "HEIF"])
    with pytest.raises(ImageDecodeError, match="pip install pillow-heif"):
        load_image(folder / "a.heic")


@needs_avif
def test_missing_avif_codec_names_the_package(phone_photos, monkeypatch):
    folder, _ = phone_photos
    monkeypatch.setattr(image_formats, "_AVIF", False)
    monkeypatch.setattr(Image, "ID", [name for name in Image.ID if name not in ("AVIF", "HEIF")])
    with pytest.raises(ImageDecodeError, match="pillow-avif-plugin"):
        load_image(folder / "c.avif")


def test_missing_codec_is_reported_as_skipped(phone_photos, tmp_path, tiny_encoder, monkeypatch):
    folder, _ = phone_photos
    monkeypatch.setattr(image_formats, "_HEIF", False)
    monkeypatch.setattr(Image, "ID", [name for name in Image.ID if name != "HEIF"])
    report = index_images(folder, tmp_path / "s.h5", tiny_encoder, workers=0, progress=False)
    reasons = {entry["path"]: entry["reason"] for entry in report.skipped_files}
    assert set(reasons) == {"a.heic", "b.HEIF"}
    assert all("pip install pillow-heif" in reason for reason in reasons.values())
