"""Generated, photo-like JPEGs for tests, benchmarks and offline demos (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["PALETTE", "make_photo", "make_photos"]

PALETTE = {
    "red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 210, 50),
    "purple": (130, 50, 160), "orange": (240, 130, 30), "gray": (128, 128, 128), "cyan": (40, 190, 200),
}


def make_photo(seed: int, size: tuple[int, int] = (500, 375)) -> Image.Image:
    """A deterministic image with a sky-like gradient, a few shapes and sensor-like noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(20, width // 2))
        y1 = y0 + int(rng.integers(20, height // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    noise = rng.normal(0, 6, (height, width, 3))
    noisy = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


def make_photos(folder: str | Path, count: int, *, size: tuple[int, int] = (500, 375),
                seed: int = 0, prefix: str = "photo") -> list[Path]:
    """Write `count` JPEGs named `{prefix}_{i:05d}.jpg` into `folder`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}_{i:05d}.jpg"
        make_photo(seed * 1_000_003 + i, size).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths

