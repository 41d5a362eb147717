"""Embedding map and near-duplicates at scale, on generated 512-d unit vectors stored as float16.

The vectors imitate CLIP image embeddings: a shared mean direction, 200 clusters, noise with a
decaying spectrum, and 1% planted near-copies (cosine ~0.98 to their original).

- map: PCA projection of 8,091 vectors plus building the jupyter-scatter widget (the Python side of
  "8,091 points on screen"; the browser side is timed by tests/test_explore_browser.py), and the PCA
  projection of 1,000,000 vectors (quick mode: 250,000, scaled linearly).
- duplicates: `duplicate_rows` (exact) at 8,091 and 100,000 vectors (quick: 8,091 and 12,000), and
  1,000,000 extrapolated from the largest run by the kernel's quadratic cost (N**2 / 2 pairs).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import print_table, quick_main

DIM = 512


def clip_like(count: int, seed: int = 0) -> np.ndarray:
    """`count` unit vectors (float16) shaped like CLIP image embeddings, 1% near-copies planted."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=DIM)
    mean /= np.linalg.norm(mean)
    centres = rng.normal(size=(200, DIM)) * np.linspace(1.0, 0.2, DIM)
    out = np.empty((count, DIM), dtype=np.float16)
    spectrum = np.linspace(0.9, 0.1, DIM).astype(np.float32)
    for first in range(0, count, 65_536):
        rows = min(65_536, count - first)
        block = (2.0 * mean + 0.12 * centres[rng.integers(0, 200, rows)]
                 + 0.06 * rng.normal(size=(rows, DIM)).astype(np.float32) * spectrum)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[first:first + rows] = block
    copies = rng.choice(count, count // 100, replace=False)
    originals = rng.integers(0, count, len(copies))
    near = out[originals].astype(np.float32) + 0.01 * rng.normal(size=(len(copies), DIM))
    out[copies] = near / np.linalg.norm(near, axis=1, keepdims=True)
    return out


def timed(action: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = action(*args, **kwargs)
    return value, time.perf_counter() - start


def map_figures(big: int) -> dict[str, float]:
    import jscatter

    from clipwidgets.embedding_map import pca_2d

    small = clip_like(8091)
    pca_2d(small[:100])  # imports (torch for the eigenvectors) are not the map's time
    coords, pca_s = timed(pca_2d, small)
    _, widget_s = timed(lambda: jscatter.Scatter(x=coords[:, 0], y=coords[:, 1], height=420).widget)
    matrix = clip_like(big, seed=1)
    _, big_s = timed(pca_2d, matrix)
    return {"map_8091_pca_s": pca_s, "map_8091_widget_s": widget_s, "map_8091_python_s": pca_s + widget_s,
            "map_pca_big_rows": big, "map_pca_big_s": big_s,
            "map_pca_1m_extrapolated_s": big_s * 1_000_000 / big}


def duplicate_figures(sizes: tuple[int, ...]) -> dict[str, float]:
    from clipwidgets.duplicates import DuplicateStats, duplicate_rows

    figures: dict[str, float] = {}
    for count in sizes:
        matrix = clip_like(count, seed=2)
        stats = DuplicateStats()
        groups, seconds = timed(duplicate_rows, matrix, 0.95, stats=stats)
        figures[f"duplicates_{count}_s"] = seconds
        figures[f"duplicates_{count}_groups"] = len(groups)
        figures[f"duplicates_{count}_candidates"] = stats.candidates
        figures[f"duplicates_{count}_pairs_per_s"] = stats.pairs / seconds
        figures["duplicates_kernel"] = stats.kernel  # type: ignore[assignment]
    largest = max(sizes)
    figures["duplicates_1m_extrapolated_s"] = figures[f"duplicates_{largest}_s"] * (1_000_000 / largest) ** 2
    figures["duplicates_extrapolated_from"] = largest
    return figures


def run(quick: bool) -> dict[str, Any]:
    """Quick: map 250k (scaled linearly to 1M: an overestimate, since the PCA axes are fitted on at most
    200,000 rows), duplicates 8,091 and 12,000; full: map 1M, duplicates 8,091 and 100,000."""
    figures: dict[str, Any] = map_figures(250_000 if quick else 1_000_000)
    figures.update(duplicate_figures((8091, 12_000) if quick else (8091, 100_000)))
    rows = [["map: PCA + widget, 8,091 points (Python side)", figures["map_8091_python_s"],
             "< 2 s on screen"],
            [f"map: PCA of {figures['map_pca_big_rows']:,} x 512", figures["map_pca_big_s"], ""],
            ["map: PCA of 1M x 512 (measured or scaled linearly)", figures["map_pca_1m_extrapolated_s"],
             "< 60 s"],
            ["duplicates: 8,091 images", figures["duplicates_8091_s"], "< 3 s"]]
    largest = figures["duplicates_extrapolated_from"]
    rows.append([f"duplicates: {largest:,} images", figures[f"duplicates_{largest}_s"], ""])
    rows.append(["duplicates: 1M images, extrapolated (x (1M/N)^2)", figures["duplicates_1m_extrapolated_s"],
                 "< 900 s"])
    print_table(f"Embedding map and near-duplicates (kernel: {figures['duplicates_kernel']})", rows,
                ["what", "seconds", "target"])
    return figures


def main(argv: list[str] | None = None) -> None:
    quick_main("explore", run, __doc__, argv)


if __name__ == "__main__":
    main()
