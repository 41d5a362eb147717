"""Embedding map and near-duplicates at scale, on generated 512-d unit vectors stored as float16.

The vectors imitate CLIP image embeddings: a shared mean direction, 200 clusters, noise with a
decaying spectrum, and 1% planted near-copies (cosine ~0.98 to their original).

- map: PCA projection of 8,091 vectors plus building the jupyter-scatter widget (the Python side of
  "8,091 points on screen"; the browser side is timed by tests/test_explore_browser.py), and the PCA
  projection of 1,000,000 vectors (quick mode: 250,000, scaled linearly).
- duplicates: `duplicate_rows` (exact) at 8,091; the approximate stage against exact at 100,000
  (quick: 12,000): pair recall, planted near-copies found, identical groups, and exact extrapolated
  to 1M by its quadratic cost (N**2 / 2 pairs); full mode: `find_duplicates` on a 1M-image store
  (method auto: the approximate stage).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import print_table, quick_main

DIM = 512


def clip_like(count: int, seed: int = 0) -> np.ndarray:
    """`count` unit vectors (float16) shaped like CLIP image embeddings, 1% near-copies planted."""
    return clip_like_with_copies(count, seed)[0]


def clip_like_with_copies(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`clip_like` vectors and the planted (original, copy) row pairs, shape (count // 100, 2)."""
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
    for first in range(0, len(copies), 65_536):
        part = slice(first, first + 65_536)
        near = out[originals[part]].astype(np.float32) + 0.01 * rng.normal(size=(len(copies[part]), DIM))
        out[copies[part]] = near / np.linalg.norm(near, axis=1, keepdims=True)
    return out, np.stack([originals, copies], axis=1)


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
    """The exact kernel at each size."""
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
    return figures


def recall_figures(count: int) -> dict[str, Any]:
    """The approximate stage against the exact kernel on the same `count` vectors: pair recall (its
    pairs are confirmed exactly, so they are a subset of the exact ones), planted near-copies found in
    one group, identical groups, and both times."""
    from clipwidgets.duplicates import DuplicateStats, duplicate_rows

    matrix, planted = clip_like_with_copies(count, seed=2)
    exact, approximate = DuplicateStats(), DuplicateStats()
    exact_groups, exact_s = timed(duplicate_rows, matrix, 0.95, stats=exact)
    groups, approximate_s = timed(duplicate_rows, matrix, 0.95, method="approximate", stats=approximate)
    return {"recall_rows": count, "recall_exact_s": exact_s, "recall_approximate_s": approximate_s,
            "recall_method": approximate.method, "recall_pairs_exact": exact.found,
            "recall_pairs_approximate": approximate.found,
            "recall_pairs": approximate.found / max(1, exact.found),
            "recall_planted": planted_recall(lambda rows: matrix[rows], planted, groups, count),
            "recall_same_groups": groups == exact_groups}


def planted_recall(vectors_of: Callable[[np.ndarray], np.ndarray], planted: np.ndarray,
                   groups: list[list[int]], count: int) -> float:
    """The share of planted (original, copy) row pairs at cosine >= 0.95 that share a group."""
    cosines = np.einsum("ij,ij->i", vectors_of(planted[:, 0]).astype(np.float64),
                        vectors_of(planted[:, 1]).astype(np.float64))
    linked = planted[cosines >= 0.95]
    group_of = np.full(count, -1)
    for number, group in enumerate(groups):
        group_of[group] = number
    together = (group_of[linked[:, 0]] >= 0) & (group_of[linked[:, 0]] == group_of[linked[:, 1]])
    return float(together.mean()) if len(linked) else 1.0


def cached_copies_store(count: int) -> tuple[Path, np.ndarray]:
    """A format-2 store of `clip_like` vectors (generated on first use, then reused from
    benchmarks/results/cache/, which is git-ignored) and its planted pairs."""
    from benchmarks.common import RESULTS_DIR
    from clipwidgets.store import EmbeddingStore, segments_folder

    cache = RESULTS_DIR / "cache"
    path, pairs_file = cache / f"explore_copies_{count}.h5", cache / f"explore_copies_{count}.npy"
    if path.exists() and pairs_file.exists():
        return path, np.load(pairs_file)
    path.unlink(missing_ok=True)
    shutil.rmtree(segments_folder(path), ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    matrix, planted = clip_like_with_copies(count, seed=3)
    meta = {"name": "bench", "pretrained": "random", "embed_dim": DIM}
    with EmbeddingStore.create(path, meta, cache / "explore_images") as store:
        for first in range(0, count, 250_000):
            rows = range(first, min(count, first + 250_000))
            store.add_images([f"photos/{i // 10_000:03d}/img_{i:08d}.jpg" for i in rows],
                             matrix[first:first + len(rows)].astype(np.float32), sizes=[1] * len(rows),
                             mtimes_ns=list(rows), widths=[1] * len(rows), heights=[1] * len(rows))
    np.save(pairs_file, planted)
    return path, planted


def store_figures(count: int) -> dict[str, Any]:
    """`find_duplicates` on a store of `count` images (method auto: approximate from 50,000), read
    block by block from its memory-mapped segments; the planted near-copies found."""
    from clipwidgets.duplicates import DuplicateStats, find_duplicates
    from clipwidgets.store import EmbeddingStore

    path, planted = cached_copies_store(count)
    stats = DuplicateStats()
    with EmbeddingStore.open(path) as store:
        groups, seconds = timed(find_duplicates, store, 0.95, stats=stats)
        row_of = {name: row for row, name in enumerate(store.image_paths())}
        rows = [[row_of[name] for name in group] for group in groups]
        found = planted_recall(store.image_vectors, planted, rows, count)
    return {"store_rows": count, "store_s": seconds, "store_method": stats.method,
            "store_groups": len(groups), "store_pairs_found": stats.found, "store_pairs_scored": stats.pairs,
            "store_planted_recall": found}


# In the page: from each animation frame on, count the pixels of the map's canvas that differ from its
# first pixel (the background); note the page clock when more than 1,000 do. jupyter-scatter draws
# with a shared WebGL renderer and copies each frame to the widget's 2-D canvas, which
# getImageData reads.
_WATCH_DRAWING = """
(() => {
  window.__drawnAt = null;
  const check = () => {
    for (const canvas of document.querySelectorAll('.clipwidgets-explore canvas')) {
      const context = canvas.width && canvas.height ? canvas.getContext('2d') : null;
      if (!context) continue;
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
      let differing = 0;
      for (let i = 0; i < pixels.length; i += 4) {
        differing += Math.abs(pixels[i] - pixels[0]) + Math.abs(pixels[i + 1] - pixels[1])
          + Math.abs(pixels[i + 2] - pixels[2]) + Math.abs(pixels[i + 3] - pixels[3]) > 30;
      }
      if (differing > 1000) { window.__drawnAt = performance.now(); return; }
    }
    requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})();
"""


def browser_map_figures(count: int = 8091, repeats: int = 3) -> dict[str, Any]:
    """Seconds from a click on "map" in `clipwidgets app` (the server creates the EmbeddingMap of
    `count` points, coloured by cluster) to the first frame with its points drawn, in headless
    Chromium (software WebGL), a fresh page each time: the first page (cold caches), then the median
    of `repeats`. Beside it, the Python side of the same map in this process. Empty when Chromium or
    Playwright is missing."""
    import tempfile

    from benchmarks.bench_app import CHROMIUM, CHROMIUM_ARGS, App

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {}
    if not CHROMIUM.exists():
        return {}
    from clipwidgets.embedding_map import EmbeddingMap
    from clipwidgets.model import load_model
    from clipwidgets.store import EmbeddingStore

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        meta = load_model("tiny").meta
        vectors = np.random.default_rng(0).normal(size=(count, int(meta["embed_dim"]))).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with EmbeddingStore.create(folder / "map.h5", meta, folder / "images") as store:
            store.add_images([f"img_{i:05d}.jpg" for i in range(count)], vectors, sizes=[1] * count,
                             mtimes_ns=[1] * count, widths=[1] * count, heights=[1] * count)
        with EmbeddingStore.open(folder / "map.h5") as store:
            EmbeddingMap(store, color_by="cluster")  # imports
            _, figures["map_app_python_s"] = timed(EmbeddingMap, store, color_by="cluster")
        app = App(folder, ["--model", "tiny", "--store", str(folder / "map.h5")], "map")
        try:
            app.wait_for("clipwidgets app: open", timeout=300)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    figures["map_app_first_page_s"] = _time_map(browser, app.url)
                    times = sorted(_time_map(browser, app.url) for _ in range(repeats))
                finally:
                    browser.close()
        finally:
            app.stop()
    figures["map_app_drawn_s"] = times
    figures["map_app_drawn_median_s"] = times[len(times) // 2]
    return figures


def _time_map(browser: Any, url: str) -> float:
    """Seconds, on the page's clock, from a click on "map" to the first frame showing the points."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.add_init_script(_WATCH_DRAWING)
        page.goto(url, timeout=120_000)
        title = page.locator(".clipwidgets-explore").get_by_text("map", exact=True)
        title.wait_for(timeout=120_000)
        title.evaluate("e => e.addEventListener('click', () => { window.__clickedAt = performance.now(); },"
                       " {capture: true})")
        title.click()
        page.wait_for_function("() => window.__drawnAt !== null", timeout=120_000, polling=50)
        return float(page.evaluate("() => window.__drawnAt - window.__clickedAt")) / 1000
    finally:
        page.close()


def run(quick: bool) -> dict[str, Any]:
    """Quick: map 250k (scaled linearly to 1M: an overestimate, since the PCA axes are fitted on at most
    200,000 rows), exact duplicates at 8,091, the approximate stage against exact at 12,000; full: map
    1M, exact at 8,091, approximate against exact at 100,000 (exact extrapolated to 1M from there),
    and `find_duplicates` on a 1M-image store (cached under benchmarks/results/cache/, ~1 GB)."""
    figures: dict[str, Any] = {"load_average_start": os.getloadavg()[0]}
    figures.update(map_figures(250_000 if quick else 1_000_000))
    figures.update(duplicate_figures((8091,)))
    figures.update(recall_figures(12_000 if quick else 100_000))  # exact at that size too
    largest = figures["recall_rows"]
    figures[f"duplicates_{largest}_s"] = figures["recall_exact_s"]
    figures["duplicates_exact_1m_extrapolated_s"] = figures["recall_exact_s"] * (1_000_000 / largest) ** 2
    figures["duplicates_extrapolated_from"] = largest
    figures.update(browser_map_figures(repeats=2 if quick else 5))
    figures["load_average_after_map"] = os.getloadavg()[0]
    if not quick:
        figures.update(store_figures(1_000_000))
        figures["duplicates_1m_s"] = figures["store_s"]
    rows = [["map: PCA + widget, 8,091 points (Python side)", figures["map_8091_python_s"],
             "< 2 s on screen"],
            [f"map: PCA of {figures['map_pca_big_rows']:,} x 512", figures["map_pca_big_s"], ""],
            ["map: PCA of 1M x 512 (measured or scaled linearly)", figures["map_pca_1m_extrapolated_s"],
             "< 60 s"],
            ["duplicates: 8,091 images (exact)", figures["duplicates_8091_s"], "< 3 s"]]
    if "map_app_drawn_median_s" in figures:
        rows.insert(1, ["map in the app, 8,091 points: click to points drawn (median, Chromium)",
                        figures["map_app_drawn_median_s"], "< 2 s"])
        rows.insert(2, ["  the same, first page (cold caches)", figures["map_app_first_page_s"], ""])
        rows.insert(3, ["  the Python side alone (PCA, k-means colours, widget)",
                        figures["map_app_python_s"], ""])
    largest = figures["duplicates_extrapolated_from"]
    rows.append([f"duplicates: {largest:,} images (exact)", figures[f"duplicates_{largest}_s"], ""])
    rows.append(["duplicates: 1M images exact, extrapolated (x (1M/N)^2)",
                 figures["duplicates_exact_1m_extrapolated_s"], ""])
    rows.append([f"duplicates: {figures['recall_rows']:,} images, {figures['recall_method']}",
                 figures["recall_approximate_s"],
                 f"pair recall {figures['recall_pairs']:.4f}, planted {figures['recall_planted']:.4f}, "
                 f"same groups: {figures['recall_same_groups']}"])
    if not quick:
        rows.append([f"duplicates: 1M-image store, {figures['store_method']}", figures["store_s"],
                     f"< 900 s; planted recall {figures['store_planted_recall']:.4f}"])
    print_table(f"Embedding map and near-duplicates (exact kernel: {figures['duplicates_kernel']})", rows,
                ["what", "seconds", "target / notes"])
    return figures


def main(argv: list[str] | None = None) -> None:
    quick_main("explore", run, __doc__, argv)


if __name__ == "__main__":
    main()
