"""A small generated collection with Flickr8k's layout and quirks, for tests, CI notebooks and benchmarks.

`make_flickr8k_like(data_dir)` writes what `download_flickr8k(data_dir)` leaves behind: Images/ with
JPEGs named like Flickr's (`<digits>_<10 hex>.jpg`), Flickr8k.token.txt with five pre-tokenised
captions per image (derived from what each picture shows), the three split files and both annotation
files. `make_flickr8k_archives(folder)` packs the same into Flickr8k_Dataset.zip and Flickr8k_text.zip
the way the real archives are packed (the misspelled Flicker8k_Dataset/ folder, __MACOSX/ AppleDouble
files); with `quirks` the token file also has CRLF line endings and the bogus `.jpg.1` group.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InvalidInputError
from ..synthetic import PALETTE
from .flickr8k import (
    CROWDFLOWER_FILE,
    EXPERT_FILE,
    IMAGE_FOLDERS,
    IMAGES_ARCHIVE,
    SPLIT_FILES,
    TEXT_ARCHIVE,
    TOKEN_FILE,
    Flickr8kPaths,
    flickr8k_paths,
)

__all__ = ["make_flickr8k_archives", "make_flickr8k_like"]

_SHAPES = ("circle", "square", "triangle")
_SPLIT_SHARES = {"train": 0.6, "dev": 0.15, "test": 0.15}  # the rest is in no split, as in the real data
_TEMPLATES = (
    "A {color} {shape} on a {background} background .",
    "a {color} {shape} in front of {background} .",
    "There is a {shape} , it is {color} .",
    "A {shape} coloured {color} against a {background} wall .",
    "Picture of a {color} {shape} .",
)
_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)


@dataclass(frozen=True)
class _Scene:
    name: str
    color: str
    shape: str
    background: str

    def caption(self, number: int) -> str:
        return _TEMPLATES[number].format(color=self.color, shape=self.shape, background=self.background)

    def matches(self, other: _Scene) -> int:
        """How many of colour, shape and background two scenes share (0-3)."""
        return ((self.color == other.color) + (self.shape == other.shape)
                + (self.background == other.background))


def make_flickr8k_like(data_dir: str | os.PathLike[str], *, n_images: int = 40, seed: int = 0,
                       quirks: bool = True, size: tuple[int, int] = (96, 72)) -> Flickr8kPaths:
    """Write a Flickr8k-shaped collection of `n_images` generated images into `data_dir`.

    With `quirks`, Flickr8k.token.txt has CRLF line endings and the extra group
    `<first image>.jpg.1` that names no image, as the real file does.
    """
    if n_images < 4:
        raise InvalidInputError(f"make_flickr8k_like needs n_images >= 4 (one per split), got {n_images}.")
    paths = flickr8k_paths(data_dir)
    paths.images.mkdir(parents=True, exist_ok=True)
    scenes = _scenes(n_images, seed)
    for index, scene in enumerate(scenes):
        _draw(scene, size, seed * 1_000_003 + index).save(paths.images / scene.name, "JPEG", quality=90)
    newline = "\r\n" if quirks else "\n"
    lines: list[str] = []
    for scene in scenes:
        lines.extend(f"{scene.name}#{n}\t{scene.caption(n)}" for n in range(len(_TEMPLATES)))
        if quirks and scene is scenes[0]:
            lines.extend(f"{scene.name}.1#{n}\t{scene.caption(n)}" for n in range(len(_TEMPLATES)))
    _write_lines(paths.token, lines, newline)
    rng = np.random.default_rng(seed)
    order = [scenes[i] for i in rng.permutation(n_images)]
    splits, start = {}, 0
    for split, share in _SPLIT_SHARES.items():
        count = max(1, round(share * n_images))
        splits[split] = [scene.name for scene in order[start:start + count]]
        _write_lines(paths.data_dir / SPLIT_FILES[split], splits[split], "\n")
        start += count
    _write_annotations(paths, scenes, splits["test"], rng)
    return paths


def make_flickr8k_archives(folder: str | os.PathLike[str], *, n_images: int = 40, seed: int = 0,
                           quirks: bool = True) -> dict[str, Path]:
    """Write Flickr8k_Dataset.zip and Flickr8k_text.zip of a generated collection into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        paths = make_flickr8k_like(scratch, n_images=n_images, seed=seed, quirks=quirks)
        images = folder / IMAGES_ARCHIVE
        with zipfile.ZipFile(images, "w", zipfile.ZIP_STORED) as zipped:
            zipped.writestr(f"{IMAGE_FOLDERS[0]}/", b"")
            for image in sorted(paths.images.iterdir()):
                zipped.write(image, f"{IMAGE_FOLDERS[0]}/{image.name}")
                if quirks:
                    zipped.writestr(f"__MACOSX/{IMAGE_FOLDERS[0]}/._{image.name}", _APPLEDOUBLE)
        text = folder / TEXT_ARCHIVE
        with zipfile.ZipFile(text, "w", zipfile.ZIP_DEFLATED) as zipped:
            for name in (TOKEN_FILE, *SPLIT_FILES.values(), EXPERT_FILE, CROWDFLOWER_FILE):
                zipped.write(paths.data_dir / name, name)
                if quirks:
                    zipped.writestr(f"__MACOSX/._{name}", _APPLEDOUBLE)
    return {IMAGES_ARCHIVE: images, TEXT_ARCHIVE: text}


def _scenes(count: int, seed: int) -> list[_Scene]:
    rng = np.random.default_rng(seed + 7)
    colors = sorted(PALETTE)
    scenes = []
    for index in range(count):
        color, background = rng.choice(len(colors), size=2, replace=False)
        digest = hashlib.sha1(f"{seed}:{index}".encode()).hexdigest()[:10]
        scenes.append(_Scene(name=f"{1_000_268_201 + 7_919 * index + 104_729 * seed}_{digest}.jpg",
                             color=colors[color], shape=_SHAPES[int(rng.integers(len(_SHAPES)))],
                             background=colors[background]))
    return scenes


def _draw(scene: _Scene, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.new("RGB", size, PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    side = int(min(width, height) * rng.uniform(0.45, 0.8))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    box = (left, top, left + side, top + side)
    fill = PALETTE[scene.color]
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(left, top + side), (left + side, top + side), (left + side // 2, top)], fill=fill)
    noise = rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8), "RGB")


def _write_annotations(paths: Flickr8kPaths, scenes: list[_Scene], test: list[str],
                       rng: np.random.Generator) -> None:
    """Expert and CrowdFlower rows for the test images: own caption #0 and captions of three others.

    Scores follow how much of the picture a caption gets right, so the judgments are meaningful.
    """
    by_name = {scene.name: scene for scene in scenes}
    expert, crowd = [], []
    for name in test:
        scene = by_name[name]
        others = [s for s in scenes if s.name != name]
        picks = [(scene, 0)] + [(others[int(i)], int(rng.integers(len(_TEMPLATES))))
                                for i in rng.choice(len(others), size=3, replace=False)]
        for other, number in picks:
            matches = scene.matches(other)
            scores = [min(4, 1 + matches + int(rng.integers(0, 2)) * (matches > 0)) for _ in range(3)]
            expert.append(f"{name}\t{other.name}#{number}\t" + "\t".join(map(str, scores)))
            yes = matches
            crowd.append(f"{name}\t{other.name}#{number}\t{yes / 3:.6f}\t{yes}\t{3 - yes}")
    _write_lines(paths.expert, expert, "\n")
    _write_lines(paths.crowdflower, crowd, "\n")


def _write_lines(path: Path, lines: list[str], newline: str) -> None:
    path.write_bytes((newline.join(lines) + newline).encode("utf-8"))
