"""Safe decoding, discovery and thumbnails. Every awkward file is generated here, in tmp_path."""

from __future__ import annotations

import io
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipwidgets.errors import ImageDecodeError
from clipwidgets.images import (
    ModelInputSpec,
    load_image,
    load_model_inputs,
    make_thumbnail,
    scan_images,
)
from clipwidgets.synthetic import make_photo

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def crash_on_marked_files(paths, spec):
    """A decode function for worker processes that dies, like a segfaulting decoder, on files named `*crash*`.

    It lives here because this module imports no torch, so worker processes start fast.
    """
    if any("crash" in Path(path).name for path in paths):
        os._exit(1)
    return load_model_inputs(paths, spec)


def hang_on_marked_files(paths, spec):
    """A decode function for worker processes that never returns, like a looping decoder, on files
    named `*hang*`; it writes its process id beside such a file first (`<name>.pid`)."""
    for path in paths:
        if "hang" in Path(path).name:
            Path(path).with_suffix(".pid").write_text(str(os.getpid()))
            time.sleep(3600)
    return load_model_inputs(paths, spec)


def _jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **options)
    return buffer.getvalue()


def write_good_awkward_images(folder: Path) -> dict[str, str]:
    """Files that must decode. Returns {file name: what is special about it}."""
    folder.mkdir(parents=True, exist_ok=True)
    rotated = Image.new("RGB", (60, 40), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    rotated.save(folder / "rotated.jpg", exif=exif)

    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.save(folder / "palette.png", transparency=0)

    Image.new("LA", (8, 8), (0, 0)).save(folder / "la.png")
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 0, 255, 255))
    rgba.save(folder / "rgba.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.linspace(0, 4000, 64 * 8).reshape(8, 64).astype(np.uint16)).save(folder / "deep.png")
    Image.fromarray(np.linspace(-1, 3, 64 * 8, dtype=np.float32).reshape(8, 64)).save(folder / "float.tif")
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    for name in ("animated.gif", "animated.webp", "animated.png"):
        frames[0].save(folder / name, save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("RGB", (12, 10), (0, 128, 0)).save(folder / "café 🐕 #1 (copy).jpg")
    return {"rotated.jpg": "exif", "palette.png": "P", "la.png": "LA", "rgba.png": "RGBA",
            "cmyk.jpg": "CMYK", "deep.png": "I;16", "float.tif": "F", "animated.gif": "gif",
            "animated.webp": "webp", "animated.png": "apng", "café 🐕 #1 (copy).jpg": "unicode"}


def write_bad_images(folder: Path) -> dict[str, str]:
    """Files that must be skipped. Returns {file name: the reason load_image must give}.

    The decompression bombs exceed Pillow's default limit (89,478,485 pixels) cheaply: 1-bit PNGs
    of zeros compress to a few kilobytes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    good = _jpeg_bytes(make_photo(0, (200, 150)))
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image\n")
    Image.new("1", (10_000, 10_000)).save(folder / "bomb_warning.png")  # 1x-2x the limit: Pillow warns
    Image.new("1", (14_000, 14_000)).save(folder / "bomb_error.png")  # over 2x: Pillow raises
    return {"truncated.jpg": "truncated file", "corrupt.png": "not an image (format not recognised)",
            "empty.jpg": "empty file (0 bytes)", "notes.jpg": "not an image (format not recognised)",
            "bomb_warning.png": "decompression bomb: 100,000,000 pixels exceeds Pillow's limit of 89,478,485",
            "bomb_error.png": "decompression bomb: 196,000,000 pixels exceeds Pillow's limit of 89,478,485"}


@pytest.fixture
def awkward(tmp_path):
    folder = tmp_path / "awkward"
    write_good_awkward_images(folder)
    return folder


def _pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    return tuple(image.getpixel(xy))


def test_exif_orientation_is_applied(awkward):
    image = load_image(awkward / "rotated.jpg")
    assert image.mode == "RGB"
    assert image.size == (40, 60)


def test_transparency_is_composited_on_white(awkward):
    palette = load_image(awkward / "palette.png")
    assert _pixel(palette, (1, 1)) == WHITE  # palette index 0 is transparent
    assert _pixel(palette, (0, 0)) == BLUE
    assert _pixel(load_image(awkward / "la.png")) == WHITE
    rgba = load_image(awkward / "rgba.png")
    assert _pixel(rgba, (0, 0)) == WHITE
    assert _pixel(rgba, (1, 1)) == BLUE


def test_cmyk_becomes_rgb(awkward):
    red, green, blue = _pixel(load_image(awkward / "cmyk.jpg"), (8, 8))
    assert red > 200 and green < 50 and blue < 50


@pytest.mark.parametrize("name", ["deep.png", "float.tif"])  # ramps over 0..4000 and -1..3
def test_high_depth_images_are_rescaled_not_clipped(awkward, name):
    pixels = np.asarray(load_image(awkward / name))[..., 0].astype(int).ravel()
    assert pixels.min() == 0 and pixels.max() == 255
    middle = pixels[len(pixels) // 2]  # the ramp's middle value maps to mid-grey
    assert 120 <= middle <= 135
    assert len(np.unique(pixels)) > 60  # a ramp, not a clipped step


@pytest.mark.parametrize("name", ["animated.gif", "animated.webp", "animated.png"])
def test_animations_give_their_first_frame(awkward, name):
    with Image.open(awkward / name) as image:
        assert getattr(image, "n_frames", 1) == 2
    red, green, blue = _pixel(load_image(awkward / name), (8, 8))
    assert red > 200 and blue < 50


def test_unicode_and_odd_names_decode(awkward):
    assert load_image(awkward / "café 🐕 #1 (copy).jpg").size == (12, 10)


def test_bad_files_raise_with_a_reason_and_no_warning(tmp_path):
    folder = tmp_path / "bad"
    expected = write_bad_images(folder)
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, reason in expected.items():
            with pytest.raises(ImageDecodeError) as raised:
                load_image(folder / name)
            assert str(raised.value) == reason, name
    assert caught == []
    assert limit == Image.MAX_IMAGE_PIXELS  # the bomb limit stays on


def test_missing_file_and_folder_named_like_an_image(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        load_image(tmp_path / "folder.jpg")
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_image(tmp_path / "gone.jpg")


def test_unreadable_file_is_permission_denied(tmp_path):
    """chmod 000 file. Root ignores permissions, so as root a forked child drops to `nobody` first."""
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "locked.jpg"
    path.write_bytes(_jpeg_bytes(make_photo(1, (64, 48))))
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(ImageDecodeError, match="permission denied"):
            load_image(path)
        return
    for parent in (folder, *folder.parents):  # let `nobody` reach the file, not read it
        parent.chmod(parent.stat().st_mode | 0o005)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: drop privileges, try to decode, report the outcome, exit
        os.close(read_end)
        try:
            os.setgid(65534)
            os.setuid(65534)
            load_image(path)
            outcome = "decoded"
        except ImageDecodeError as error:
            outcome = f"ImageDecodeError: {error}"
        except BaseException as error:  # report anything else to the parent
            outcome = f"{type(error).__name__}: {error}"
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(child, 0)
    assert outcome == "ImageDecodeError: permission denied"


def test_draft_decodes_big_jpegs_at_a_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg_bytes(make_photo(2, (2000, 1500))))
    assert load_image(path).size == (2000, 1500)
    assert load_image(path, draft_size=(224, 224)).size == (500, 375)  # 1/4: still >= 224 both ways
    phone = tmp_path / "phone.jpg"  # phones write MPO: a JPEG with extra frames
    make_photo(2, (2000, 1500)).save(phone, "MPO", save_all=True, append_images=[make_photo(3, (2000, 1500))])
    assert load_image(phone, draft_size=(224, 224)).size == (500, 375)


def test_make_thumbnail_returns_a_small_jpeg(tmp_path):
    path = tmp_path / "photo.png"
    make_photo(3, (500, 375)).save(path)
    thumbnail = Image.open(io.BytesIO(make_thumbnail(path, max_side=100)))
    assert thumbnail.format == "JPEG"
    assert thumbnail.size == (100, 75)
    with pytest.raises(ImageDecodeError):
        make_thumbnail(tmp_path / "missing.jpg")


def test_scan_images_skips_hidden_macos_and_loops(tmp_path, awkward):
    root = tmp_path / "awkward"
    (root / ".hidden.jpg").write_bytes(b"x")
    (root / "._rotated.jpg").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "a.jpg").write_bytes(b"x")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "b.jpg").write_bytes(b"x")
    (root / "readme.txt").write_text("not an image")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "UPPER.JPG").write_bytes(b"x")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    os.mkfifo(root / "pipe.jpg")
    found = scan_images(root)
    expected = sorted(write_good_awkward_images(tmp_path / "again")) + ["sub/deeper/UPPER.JPG"]
    assert list(found) == sorted(expected)
    size, mtime_ns = found["rotated.jpg"]
    assert size == (root / "rotated.jpg").stat().st_size
    assert mtime_ns == (root / "rotated.jpg").stat().st_mtime_ns


def test_scan_images_follows_symlinked_folders_once(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(outside / "x.png")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "link_again").symlink_to(outside, target_is_directory=True)
    assert list(scan_images(root)) == ["link/x.png"]


def _normalised(pixels: np.ndarray, mean, std):
    import torch
    from torchvision.transforms import ToTensor

    tensor = ToTensor()(np.array(pixels))
    return (tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (90, 100), (1200, 60), (224, 224)])
def test_worker_preprocessing_matches_open_clip(tmp_path, tiny_encoder, size):
    import open_clip

    path = tmp_path / "photo.png"  # PNG: no JPEG draft, so both sides see the same pixels
    make_photo(4, size).save(path)
    configs = [(tiny_encoder.meta["preprocess"], tiny_encoder.preprocess),
               ({"image_size": [224, 224], "interpolation": "bicubic", "resize_mode": "shortest",
                 "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD},
                open_clip.image_transform(224, is_train=False))]
    for meta, transform in configs:
        spec = ModelInputSpec.from_meta(meta)
        assert spec.supported
        [(pixels, full_size)] = load_model_inputs([str(path)], spec)
        assert full_size == size
        assert pixels.shape == (*spec.image_size, 3) and pixels.dtype == np.uint8
        expected = transform(Image.open(path))
        difference = (_normalised(pixels, meta["mean"], meta["std"]) - expected).abs()
        assert float(difference.max()) < 3 / 255 / min(meta["std"])  # at most a couple of grey levels
        assert float(difference.mean()) < 1e-3


def test_load_model_inputs_reports_reasons(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg_bytes(make_photo(5, (64, 48))))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    spec = ModelInputSpec((32, 32))
    results = load_model_inputs([str(good), str(empty)], spec)
    assert results[0][0].shape == (32, 32, 3) and results[0][1] == (64, 48)
    assert results[1] == "empty file (0 bytes)"


def test_a_lower_pixel_limit_is_enforced(tmp_path, monkeypatch):
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg_bytes(make_photo(5, (64, 48))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError) as raised:
        load_image(good)
    assert str(raised.value) == "decompression bomb: 3,072 pixels exceeds Pillow's limit of 1,000"
