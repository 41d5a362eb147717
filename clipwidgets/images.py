"""Safe image decoding, discovery and thumbnails: pure PIL + numpy, no torch.

`load_image` turns any file into an RGB image or raises `ImageDecodeError` with a short reason;
it never lets a Pillow warning escape and never lifts Pillow's decompression-bomb limit.
`scan_images` finds the images under a folder, deterministically. `load_model_inputs` is what the
indexer's decoding workers (`decode_workers.py`) run: decode, resize and crop to the model's input
size, as uint8.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDecodeError
from .image_formats import AVIF_EXTENSIONS, HEIF_EXTENSIONS, missing_codec

__all__ = [
    "FILE_NOT_FOUND", "IMAGE_EXTENSIONS", "PERMISSION_DENIED", "ModelInputSpec", "load_image",
    "load_model_input", "load_model_inputs", "make_thumbnail", "scan_images"
]

# AVIF and HEIC/HEIF are listed even where their codec is missing: such files are reported as
# skipped with the package to install, not silently ignored.
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib",
    ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", *AVIF_EXTENSIONS, *HEIF_EXTENSIONS,
})
_IGNORED_DIRS = frozenset({"__MACOSX"})
_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255)
FILE_NOT_FOUND = "file not found"  # these two reasons are transient: the indexer retries such files
PERMISSION_DENIED = "permission denied"
_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def scan_images(root: str | os.PathLike[str]) -> dict[str, tuple[int, int]]:
    """Every image file under `root`: sorted relative POSIX path -> (size in bytes, mtime in ns).

    Recursive and deterministic. Skips hidden files and folders (names starting with "."), which
    covers AppleDouble `._*` files, and `__MACOSX/` folders; keeps only IMAGE_EXTENSIONS (any case)
    and regular files. Symlinked folders are followed, each real folder at most once, so symlink
    loops end. Folders that cannot be listed are left out.
    """
    root = Path(root)
    found: dict[str, tuple[int, int]] = {}
    for relpath, info in _walk(root, "", set()):
        found[relpath] = (info.st_size, info.st_mtime_ns)
    return dict(sorted(found.items()))


def _walk(folder: Path, prefix: str, seen: set[tuple[int, int]]) -> Iterator[tuple[str, os.stat_result]]:
    try:
        info = folder.stat()
        if (info.st_dev, info.st_ino) in seen:
            return
        seen.add((info.st_dev, info.st_ino))
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") or entry.name in _IGNORED_DIRS:
            continue
        try:
            info = entry.stat()  # follows symlinks; a dangling link raises and is left out
        except OSError:
            continue
        relpath = prefix + entry.name
        if stat.S_ISDIR(info.st_mode):
            yield from _walk(Path(entry.path), relpath + "/", seen)
        elif stat.S_ISREG(info.st_mode) and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
            yield relpath, info


def load_image(path: str | os.PathLike[str], *, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode `path` into an RGB image, or raise ImageDecodeError with a short reason.

    Applies the EXIF orientation, composites transparency on white, converts CMYK, rescales 16-bit
    and float images by their range (no clipping) and takes the first frame of animations. With
    `draft_size` (width, height), JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale that is
    still at least that size, which is several times faster for big photos.
    """
    return _decode(Path(path), draft_size)[0]


def _decode(path: Path, draft_size: tuple[int, int] | None) -> tuple[Image.Image, tuple[int, int]]:
    """The RGB image and the file's full (width, height) after orientation."""
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                full_size = image.size
                if draft_size is not None and image.format in ("JPEG", "MPO"):  # MPO: phone JPEGs
                    image.draft("RGB", draft_size)
                image.load()
                orientation = _orientation(image)
                if orientation in _SWAPPING_ORIENTATIONS:
                    full_size = (full_size[1], full_size[0])
                oriented = _apply_orientation(image, orientation)
                return _to_rgb(oriented), full_size
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(_bomb_reason(error)) from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError(missing_codec(path) or "not an image (format not recognised)") from error
    except FileNotFoundError as error:
        raise ImageDecodeError(FILE_NOT_FOUND) from error
    except PermissionError as error:
        raise ImageDecodeError(PERMISSION_DENIED) from error
    except IsADirectoryError as error:
        raise ImageDecodeError("not a regular file") from error
    except MemoryError as error:
        raise ImageDecodeError("too large to decode (out of memory)") from error
    except EOFError as error:
        raise ImageDecodeError("truncated file") from error
    except Exception as error:  # any decoder failure is this file's problem, never the run's
        if "truncated" in str(error).lower():
            raise ImageDecodeError("truncated file") from error
        raise ImageDecodeError(f"corrupt: {_short(error)}") from error


def _bomb_reason(error: Exception) -> str:
    match = re.search(r"\((\d+) pixels\)", str(error))
    pixels = f"{int(match.group(1)):,} pixels" if match else "its pixel count"
    return f"decompression bomb: {pixels} exceeds Pillow's limit of {Image.MAX_IMAGE_PIXELS:,}"


def _short(error: Exception, limit: int = 120) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # unreadable EXIF: keep the pixels as stored
        return 1


def _apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    if orientation in (1, 0):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a malformed orientation tag is not worth losing the image over
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_rescaled_to_uint8(np.asarray(image)), "L").convert("RGB")
    if image.mode in _TRANSPARENT_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode == "RGB":
        return image  # convert() would copy it
    return image.convert("RGB")


def _rescaled_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map [min(0, lowest), highest] linearly onto 0..255; NaN becomes the low end."""
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = min(0.0, float(finite.min())), float(finite.max())
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.round((values - low) * scale).astype(np.uint8)


def make_thumbnail(path: str | os.PathLike[str], *, max_side: int = 192, quality: int = 80) -> bytes:
    """JPEG bytes of the image shrunk so that its longest side is at most `max_side` pixels."""
    image = load_image(path, draft_size=(max_side, max_side))
    image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@dataclass(frozen=True)
class ModelInputSpec:
    """How a model wants its pixels: `image_size` (height, width), resampling and resize mode.

    Mirrors open_clip's eval transform up to (not including) the float conversion: "shortest"
    resizes the shortest side then centre-crops, "squash" resizes to the exact size.
    """

    image_size: tuple[int, int]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def from_meta(cls, preprocess: dict) -> ModelInputSpec:
        """The spec from an encoder's `meta["preprocess"]`."""
        height, width = preprocess["image_size"]
        return cls((int(height), int(width)), preprocess.get("interpolation", "bicubic"),
                   preprocess.get("resize_mode", "shortest"))

    @property
    def supported(self) -> bool:
        """True when `fit` reproduces open_clip's transform for this spec."""
        square = self.image_size[0] == self.image_size[1]
        return self.interpolation in _RESAMPLING and (
            self.resize_mode == "squash" or (self.resize_mode == "shortest" and square))

    @property
    def draft_size(self) -> tuple[int, int]:
        side = max(self.image_size)
        return side, side

    def fit(self, image: Image.Image) -> Image.Image:
        """Resize (and crop) an RGB image to `image_size`, as open_clip's eval transform does."""
        height, width = self.image_size
        resample = _RESAMPLING[self.interpolation]
        if self.resize_mode == "squash":
            return image if image.size == (width, height) else image.resize((width, height), resample)
        return _resize_shortest_center_crop(image, height, resample)


def _resize_shortest_center_crop(image: Image.Image, side: int, resample: Image.Resampling) -> Image.Image:
    """torchvision's Resize(side) then CenterCrop(side), resizing only the cropped region.

    Resampling just the box that survives the crop gives the same pixels (Pillow's filter still
    reads pixels around the box) without building a huge intermediate for extreme aspect ratios.
    """
    width, height = image.size
    if width <= height:
        new_width, new_height = side, int(side * height / width)
    else:
        new_width, new_height = int(side * width / height), side
    if (new_width, new_height) == (width, height):
        scale_x = scale_y = 1.0
    else:
        scale_x, scale_y = width / new_width, height / new_height
    left = int(round((new_width - side) / 2.0))
    top = int(round((new_height - side) / 2.0))
    if scale_x == 1.0 and scale_y == 1.0:
        return image.crop((left, top, left + side, top + side))
    box = (left * scale_x, top * scale_y, (left + side) * scale_x, (top + side) * scale_y)
    return image.resize((side, side), resample, box=box)


def load_model_input(path: str | os.PathLike[str],
                     spec: ModelInputSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode `path` for a model: uint8 array (H, W, 3) of the model's input, and the file's (width, height).

    When `spec` is not `supported`, the array is the whole decoded image (for the model's own transform).
    Raises ImageDecodeError like `load_image`.
    """
    image, full_size = _decode(Path(path), spec.draft_size)
    if spec.supported:
        image = spec.fit(image)
    return np.asarray(image), full_size


def load_model_inputs(paths: Sequence[str],
                      spec: ModelInputSpec) -> list[tuple[np.ndarray, tuple[int, int]] | str]:
    """`load_model_input` for each path; a failure becomes its reason string."""
    results: list[tuple[np.ndarray, tuple[int, int]] | str] = []
    for path in paths:
        try:
            results.append(load_model_input(path, spec))
        except ImageDecodeError as error:
            results.append(str(error))
    return results
