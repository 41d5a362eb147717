"""Relevance feedback with a simulated user: does precision@24 rise after two rounds of marks?

The collection is labelled and generated: colour families (red, green, blue, yellow, purple, gray)
of photo-like images (a tinted background with random discs), which the offline `tiny` model
(random weights) separates: its nearest class centroid is right for ~90% of the images. Each class
is searched with the text "a photo of <colour>": with random weights that text points anywhere, so
round 0 is near chance for some classes and good for others. In each round the simulated user looks
at the top 24, marks the first 4 relevant and the first 4 irrelevant images not marked yet, and
the search runs again with all marks so far (Rocchio, default weights).

Reported, averaged over the classes: precision@24 of the ranking (marked images included, as the
panel shows them) and of the residual ranking (images already marked left out: only new finds count).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from benchmarks.common import print_table, quick_main

FAMILIES = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210),
            "yellow": (230, 210, 50), "purple": (130, 50, 160), "gray": (128, 128, 128)}
TOP = 24
MARKS = 4
ROUNDS = 2


def family_image(colour: tuple[int, int, int], seed: int, side: int = 96) -> Image.Image:
    """A tinted background with 2-5 discs (half in the family's colour) and sensor-like noise."""
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.float64)
    background = np.clip(base + rng.normal(0, 25, 3), 0, 255)
    image = Image.fromarray((np.ones((side, side, 3)) * background).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = (int(v) for v in rng.integers(0, side, 2))
        size = int(rng.integers(10, side // 2))
        own = np.clip(base * rng.uniform(0.5, 1.3), 0, 255)
        fill = rng.integers(0, 256, 3) if rng.random() < 0.5 else own
        draw.ellipse((x0, y0, x0 + size, y0 + size), fill=tuple(int(v) for v in fill))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, 8, (side, side, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def build_store(folder: Path, per_class: int, encoder: Any) -> tuple[Any, np.ndarray]:
    """A store of per_class images of each family; returns it and each row's class number."""
    from clipwidgets.store import EmbeddingStore

    names, images, labels = [], [], []
    for number, colour in enumerate(FAMILIES.values()):
        for i in range(per_class):
            names.append(f"{list(FAMILIES)[number]}_{i:04d}.png")
            images.append(family_image(colour, number * 100_003 + i))
            labels.append(number)
    store = EmbeddingStore.create(folder / "families.h5", encoder.meta, folder)
    store.add_images(names, encoder.encode_images(images), sizes=[0] * len(names),
                     mtimes_ns=[0] * len(names), widths=[96] * len(names), heights=[96] * len(names))
    store.close()
    return EmbeddingStore.open(folder / "families.h5"), np.array(labels)


def simulate(searcher: Any, labels: np.ndarray, target: int, query: str) -> dict[str, list[float]]:
    """Precision@24 per round (0 = no feedback) for one class, full and residual rankings."""
    relevant: list[int] = []
    irrelevant: list[int] = []
    full, residual = [], []
    for round_number in range(ROUNDS + 1):
        options = {"positive": relevant, "negative_images": irrelevant}
        ranked = [hit.index for hit in searcher.search(query, k=TOP, **options)]
        full.append(float(np.mean(labels[ranked] == target)))
        judged = relevant + irrelevant
        fresh = [hit.index for hit in searcher.search(query, k=TOP, exclude=judged or None, **options)]
        residual.append(float(np.mean(labels[fresh] == target)))
        if round_number == ROUNDS:
            break
        unmarked = [row for row in ranked if row not in judged]
        relevant += [row for row in unmarked if labels[row] == target][:MARKS]
        irrelevant += [row for row in unmarked if labels[row] != target][:MARKS]
    return {"full": full, "residual": residual}


def run(quick: bool) -> dict[str, Any]:
    """Quick: 40 images per class; full: 150 per class (6 classes)."""
    from clipwidgets.model import load_model
    from clipwidgets.searcher import Searcher

    per_class = 40 if quick else 150
    encoder = load_model("tiny", device="cpu", precision="fp32")
    with tempfile.TemporaryDirectory() as folder:
        store, labels = build_store(Path(folder), per_class, encoder)
        with Searcher(store, encoder) as searcher:
            runs = [simulate(searcher, labels, number, f"a photo of {name}")
                    for number, name in enumerate(FAMILIES)]
        store.close()
    figures: dict[str, Any] = {"classes": len(FAMILIES), "images": per_class * len(FAMILIES), "top": TOP,
                               "marks_per_round": MARKS, "rounds": ROUNDS, "model": "tiny"}
    rows = []
    for kind in ("full", "residual"):
        means = np.mean([run[kind] for run in runs], axis=0) * 100
        for round_number, value in enumerate(means):
            figures[f"{kind}_precision_round{round_number}"] = float(value)
        figures[f"{kind}_gain_points"] = float(means[-1] - means[0])
        rows.append([kind, *[float(v) for v in means], float(means[-1] - means[0])])
    figures["per_class_full"] = {name: run["full"] for name, run in zip(FAMILIES, runs, strict=True)}
    print_table(f"Relevance feedback: precision@{TOP} (%) averaged over {len(FAMILIES)} classes, "
                f"{MARKS}+{MARKS} marks per round", rows,
                ["ranking", "round 0", "round 1", "round 2", "gain (points)"])
    return figures


def main(argv: list[str] | None = None) -> None:
    quick_main("feedback", run, __doc__, argv)


if __name__ == "__main__":
    main()
