"""Search: exact top-10 of clipwidgets vs numpy float32 vs faiss IndexFlatIP vs the memory-bandwidth
floor (the time to read the float16 matrix once, measured in the same run), for one query and a
batch of 64; the approximate index's speed and recall@10; text query latency at 8,091 images.

    python -m benchmarks.bench_search [--quick]

Vectors are random unit vectors (512-d); the approximate index is measured on clustered vectors,
closer to real embeddings than uniform noise. Each timing reports the best and the median of its
repeats; ratios use the best of each (the machine is shared, and the best is the least disturbed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, benchmark_encoder, print_table, write_json
from clipwidgets.searcher import Searcher
from clipwidgets.store import EmbeddingStore

DIM = 512
K = 10
BATCH = 64
FLICKR8K_IMAGES = 8091
META = {"name": "benchmark-vectors", "pretrained": "none", "embed_dim": DIM}


def best_and_median(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(best, median) milliseconds per call of `fn` over `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return min(times), statistics.median(times)


def unit_vectors(count: int, *, seed: int, centres: np.ndarray | None = None, spread: float = 1.0,
                 dim: int = DIM) -> np.ndarray:
    """`count` float16 unit rows: uniform on the sphere, or scattered around `centres`."""
    generator = torch.Generator().manual_seed(seed)
    out = np.empty((count, dim), dtype=np.float16)
    for first in range(0, count, 1 << 16):
        rows = torch.randn(min(1 << 16, count - first), dim, generator=generator)
        if centres is not None:
            picks = torch.randint(0, len(centres), (len(rows),), generator=generator)
            rows = torch.from_numpy(centres)[picks] + spread * rows / dim**0.5
        out[first:first + len(rows)] = (rows / rows.norm(dim=1, keepdim=True)).half().numpy()
    return out


def write_store(path: Path, matrix: np.ndarray, meta: dict[str, Any] = META) -> Path:
    count = len(matrix)
    with EmbeddingStore.create(path, meta, path.parent) as store:
        store.add_images([f"img/{i:07d}.jpg" for i in range(count)], matrix, sizes=np.ones(count),
                         mtimes_ns=np.ones(count), widths=np.ones(count), heights=np.ones(count))
    return path


def numpy_top_k(matrix32: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The float32 numpy baseline: scores, argpartition, sort the k best (per query column)."""
    scores = matrix32 @ queries.T
    top = np.argpartition(-scores, K, axis=0)[:K]
    order = np.argsort(-np.take_along_axis(scores, top, axis=0), axis=0)
    return np.take_along_axis(top, order, axis=0)


def read_floor(matrix: np.ndarray, repeats: int) -> tuple[float, float]:
    """Best and median ms to read `matrix` once (an int64 max over its bytes), on one thread or all
    of them, whichever is faster: the memory-bandwidth floor of any exact search."""
    flat = matrix.reshape(-1)
    words = torch.from_numpy(flat[: flat.size // 4 * 4]).view(torch.int64)
    threads = torch.get_num_threads()
    all_threads = best_and_median(words.amax, repeats)
    torch.set_num_threads(1)
    try:
        one_thread = best_and_median(words.amax, repeats)
    finally:
        torch.set_num_threads(threads)
    return min(all_threads, one_thread)


def ours(path: Path, queries: np.ndarray, repeats: int) -> dict[str, Any]:
    """clipwidgets: one query, a batch, the floor, and agreement with a float64 ranking."""
    figures: dict[str, Any] = {}
    with Searcher(path, ann="never") as searcher:
        stored = searcher.store.image_embeddings()
        figures["floor_ms"], figures["floor_median_ms"] = read_floor(stored, repeats)
        query = queries[0]
        figures["search_ms"], figures["search_median_ms"] = best_and_median(
            lambda: searcher.search(query, k=K), repeats)
        batch_best, batch_median = best_and_median(lambda: searcher.search_many(list(queries), k=K),
                                                   max(2, repeats // 5))
        figures["batch_ms_per_query"] = batch_best / BATCH
        figures["batch_median_ms_per_query"] = batch_median / BATCH
        found = [hit.index for hit in searcher.search(query, k=K)]
        exact = stored.astype(np.float64) @ query.astype(np.float64)
        reference = np.lexsort((np.arange(len(exact)), -exact))[:K]
        figures["equals_float64_reference"] = found == reference.tolist()
    return figures


def baselines(matrix32: np.ndarray, queries: np.ndarray, repeats: int) -> dict[str, Any]:
    """numpy float32 and faiss IndexFlatIP on the same vectors, one query and a batch."""
    import faiss

    figures: dict[str, Any] = {}
    figures["numpy_fp32_ms"], _ = best_and_median(lambda: numpy_top_k(matrix32, queries[:1]), repeats)
    numpy_batch, _ = best_and_median(lambda: numpy_top_k(matrix32, queries), max(2, repeats // 5))
    figures["numpy_fp32_batch_ms_per_query"] = numpy_batch / BATCH
    flat = faiss.IndexFlatIP(DIM)
    flat.add(matrix32)
    figures["faiss_flat_ms"], _ = best_and_median(lambda: flat.search(queries[:1], K), repeats)
    faiss_batch, _ = best_and_median(lambda: flat.search(queries, K), max(2, repeats // 5))
    figures["faiss_flat_batch_ms_per_query"] = faiss_batch / BATCH
    return figures


def exact_figures(count: int, folder: Path, repeats: int) -> dict[str, Any]:
    """One size: clipwidgets, numpy float32, faiss IndexFlatIP and the floor, one query and a batch."""
    queries = unit_vectors(BATCH, seed=1).astype(np.float32)
    matrix = unit_vectors(count, seed=count)
    path = write_store(folder / f"exact_{count}.h5", matrix)
    figures = ours(path, queries, repeats)
    path.unlink()
    figures.update(baselines(matrix.astype(np.float32), queries, repeats))
    figures["ratio_vs_floor"] = figures["search_ms"] / figures["floor_ms"]
    figures["speedup_vs_faiss_flat"] = figures["faiss_flat_ms"] / figures["search_ms"]
    figures["speedup_vs_numpy_fp32"] = figures["numpy_fp32_ms"] / figures["search_ms"]
    figures["batch_speedup_per_query"] = figures["search_ms"] / figures["batch_ms_per_query"]
    return figures


def ann_figures(count: int, folder: Path, queries: int) -> dict[str, Any]:
    """HNSW beside a store of clustered vectors: build time, query time and recall@10 vs exact."""
    from clipwidgets.ann import build_ann_index

    centres = unit_vectors(max(10, count // 100), seed=2).astype(np.float32)
    path = write_store(folder / f"ann_{count}.h5", unit_vectors(count, seed=3, centres=centres, spread=0.8))
    probes = unit_vectors(queries, seed=4, centres=centres, spread=0.8).astype(np.float32)
    with EmbeddingStore.open(path) as store:
        start = time.perf_counter()
        build_ann_index(store, kind="hnsw")
        build_s = time.perf_counter() - start
    with Searcher(path, ann="always") as approximate, Searcher(path, ann="never") as exact:
        found = sum(len({h.index for h in approximate.search(q, k=K)} & {h.index for h in
                             exact.search(q, k=K)}) for q in probes)
        ann_ms, _ = best_and_median(lambda: [approximate.search(q, k=K) for q in probes[:10]], 3)
        exact_ms, _ = best_and_median(lambda: [exact.search(q, k=K) for q in probes[:10]], 3)
    for leftover in folder.glob(f"ann_{count}.h5*"):
        leftover.unlink()
    return {"n": count, "build_s": build_s, "search_ms": ann_ms / 10, "exact_search_ms": exact_ms / 10,
            "recall_at_10": found / (K * len(probes)), "queries": len(probes)}


def text_query_figures(folder: Path, repeats: int, *, quick: bool) -> dict[str, Any]:
    """Text query to ranked results at 8,091 images, model warm: ViT-B/32 (random weights), or the
    tiny test model in quick mode."""
    encoder = benchmark_encoder("fp32", quick=quick)
    path = write_store(folder / "flickr_size.h5", unit_vectors(FLICKR8K_IMAGES, seed=5, dim=encoder.dim),
                       meta=encoder.meta)
    texts = iter(f"a dog playing in the park number {i}" for i in range(10_000))
    with Searcher(path, encoder) as searcher:
        new_text_ms, new_text_median_ms = best_and_median(lambda: searcher.search(next(texts), k=K), repeats)
        cached_ms, _ = best_and_median(lambda: searcher.search("a dog playing in the park", k=K), repeats)
        encode_ms, _ = best_and_median(lambda: encoder.encode_texts([next(texts)]), repeats)
        vector = searcher.query_vector("a dog playing in the park")[0]
        search_only_ms, _ = best_and_median(lambda: searcher.search(vector, k=K), repeats * 5)
    path.unlink()
    return {"images": FLICKR8K_IMAGES, "text_query_ms": new_text_ms,
            "text_query_median_ms": new_text_median_ms, "cached_text_query_ms": cached_ms,
            "encode_text_ms": encode_ms, "search_only_ms": search_only_ms}


def run(quick: bool) -> dict[str, Any]:
    """Measure, print tables, return the figures."""
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    figures: dict[str, Any] = {"dim": DIM, "k": K, "batch": BATCH, "torch_threads": torch.get_num_threads()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        folder = Path(tmp)
        for count in sizes:
            repeats = (10 if count >= 1_000_000 else 30) if not quick else 5
            measured = exact_figures(count, folder, repeats)
            figures.update({f"n{count}_{name}": value for name, value in measured.items()})
            rows.append([count, measured["floor_ms"], measured["search_ms"], measured["ratio_vs_floor"],
                         measured["numpy_fp32_ms"], measured["faiss_flat_ms"],
                         measured["speedup_vs_faiss_flat"], measured["batch_ms_per_query"],
                         measured["faiss_flat_batch_ms_per_query"], measured["equals_float64_reference"]])
        print_table("Exact top-10, best of repeats (ms)", rows,
                    ["N", "floor", "clipwidgets", "x floor", "numpy fp32", "faiss flat", "faiss / ours",
                     "ours batch/q", "faiss batch/q", "= float64"])
        ann = ann_figures(10_000 if quick else 200_000, folder, 20 if quick else 50)
        figures.update({f"ann_{name}": value for name, value in ann.items()})
        print_table("Approximate index (HNSW, clustered vectors)",
                    [[ann[key] for key in ("n", "build_s", "search_ms", "exact_search_ms", "recall_at_10")]],
                    ["N", "build s", "ms/query", "exact ms/query", "recall@10"])
        text = text_query_figures(folder, 5 if quick else 20, quick=quick)
        text["model"] = encoder_label = "tiny (quick mode)" if quick else "ViT-B-32-quickgelu, random weights"
        figures.update(text)
        print_table(f"Text query at {FLICKR8K_IMAGES} images, {encoder_label}, fp32 (ms)",
                    [[text["text_query_ms"], text["text_query_median_ms"], text["cached_text_query_ms"],
                      text["encode_text_ms"], text["search_only_ms"]]],
                    ["new text", "median", "cached text", "encoder only", "search only"])
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k and 100k only, few repeats")
    args = parser.parse_args(argv)
    figures = run(args.quick)
    print(f"wrote {write_json(RESULTS_DIR / 'search.json', figures)}")


if __name__ == "__main__":
    main()
