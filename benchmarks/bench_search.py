"""Search: exact top-10 of clipwidgets vs numpy float32 vs faiss IndexFlatIP vs the memory-bandwidth
floor (the time to read the float16 matrix once, measured in the same run), for one query and a
batch of 64; the approximate index's speed and recall@10; text query latency at 8,091 images.

    python -m benchmarks.bench_search [--quick] [--scale] [--avx2-only]

Vectors are random unit vectors (512-d); the approximate index is measured on clustered vectors,
closer to real embeddings than uniform noise. Each timing reports the best and the median of its
repeats; ratios use the best of each (the machine is shared, and the best is the least disturbed).
clipwidgets is timed twice per size, interleaved with numpy and the floor: with the kernel it picks
on an idle machine ("search") and on a busy one ("search_busy", see clipwidgets.searching.kernels).
`--scale` adds exact top-10 over a 10M x 512 float16 memory map of 10 segments (about 10 GB, written
once under benchmarks/results/cache/, page cache warmed first) against its read floor.

The text query is timed back to back (each search with a new text right after the last) and with
queries 0.5 s apart, beside the encoder alone and the search alone, so that anything one leaves
running which slows the other shows. On an AVX512 CPU the full run also times exact search as on an
AVX2-only CPU, emulated (`--avx2-only`, in a child process): torch's AVX2 kernels
(ATEN_CPU_CAPABILITY=avx2), OpenBLAS's Haswell kernels, numpy without its AVX512 code paths, MKL and
oneDNN capped at AVX2, and clipwidgets' kernel choice for AVX2 (CLIPWIDGETS_SEARCH_CPU=avx2). The
memory system stays this machine's, so it is an emulation, not an AVX2 machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, benchmark_encoder, print_table, write_json
from clipwidgets.searcher import Searcher
from clipwidgets.searching import kernels
from clipwidgets.searching.blocks import BlockMatrix
from clipwidgets.searching.index import ExactIndex
from clipwidgets.searching.scorers import ImageScorer
from clipwidgets.settings import ENV_SEARCH_CPU
from clipwidgets.store import EmbeddingStore, VectorBlock

DIM = 512
K = 10
SPACED_S = 0.5  # pause between the spaced text queries
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
        ones = [1] * count
        store.add_images([f"img/{i:07d}.jpg" for i in range(count)], matrix, sizes=ones, mtimes_ns=ones,
                         widths=ones, heights=ones)
    return path


def numpy_top_k(matrix32: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The float32 numpy baseline: scores, argpartition, sort the k best (per query column)."""
    scores = matrix32 @ queries.T
    top = np.argpartition(-scores, K, axis=0)[:K]
    order = np.argsort(-np.take_along_axis(scores, top, axis=0), axis=0)
    return np.take_along_axis(top, order, axis=0)


def read_floor(matrix: np.ndarray) -> Callable[[], Any]:
    """A call that reads `matrix` once (an int64 max over its bytes, on all threads): the
    memory-bandwidth floor of any exact search. Its one-thread twin is `read_floor_one_thread`."""
    flat = matrix.reshape(-1)
    words = torch.from_numpy(flat[: flat.size // 4 * 4]).view(torch.int64)
    return words.amax


def read_floor_one_thread(matrix: np.ndarray) -> Callable[[], Any]:
    """`read_floor` on one thread (the floor is the faster of the two; small matrices favour one)."""
    from clipwidgets.openmp import one_thread

    amax = read_floor(matrix)

    def read() -> Any:
        with one_thread():
            return amax()
    return read


def with_busy(busy: bool, fn: Callable[[], Any]) -> Callable[[], Any]:
    """`fn` with clipwidgets' kernel choice made as on an idle (False) or busy (True) machine."""
    def run() -> Any:
        real = kernels.machine_busy
        kernels.machine_busy = lambda: busy
        try:
            return fn()
        finally:
            kernels.machine_busy = real
    return run


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int,
                rounds: int = 3) -> dict[str, tuple[float, float]]:
    """Best and median ms of each call, measured in `rounds` interleaved rounds (A B C A B C ...)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in calls.items():
            for _ in range(max(1, repeats // rounds)):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: (min(values), statistics.median(values)) for name, values in times.items()}


def paired(floor: Callable[[], Any], fn: Callable[[], Any], pairs: int) -> dict[str, float]:
    """`fn` timed `pairs` times, each call between two calls of `floor`: the best and median ms of
    each, and `ratio`, the median over calls of fn's time / the mean of the floor calls beside it.
    Memory bandwidth on this shared host moves between two levels from one minute to the next (the
    10M floor read ~160 or ~285 ms), so the best of each alone can compare two different moments;
    `ratio_best` (best / best) is kept beside it."""
    def timed(call: Callable[[], Any]) -> float:
        start = time.perf_counter()
        call()
        return (time.perf_counter() - start) * 1000

    fn()  # warm-up
    floors, times = [timed(floor)], []
    for _ in range(pairs):
        times.append(timed(fn))
        floors.append(timed(floor))
    beside = [(before + after) / 2 for before, after in zip(floors, floors[1:], strict=False)]
    ratios = [took / floor_ms for took, floor_ms in zip(times, beside, strict=True)]
    return {"floor_ms": min(floors), "floor_median_ms": statistics.median(floors), "ms": min(times),
            "median_ms": statistics.median(times), "ratio": statistics.median(ratios),
            "ratio_best": min(times) / min(floors)}


def ours_batch(path: Path, queries: np.ndarray, repeats: int) -> dict[str, Any]:
    """clipwidgets: a batch of queries, and agreement of one query with a float64 ranking."""
    figures: dict[str, Any] = {}
    with Searcher(path, ann="never") as searcher:
        batch_best, batch_median = best_and_median(lambda: searcher.search_many(list(queries), k=K),
                                                   max(2, repeats // 5))
        figures["batch_ms_per_query"] = batch_best / BATCH
        figures["batch_median_ms_per_query"] = batch_median / BATCH
        stored = searcher.store.image_embeddings()
        for busy in (False, True):
            found = [hit.index for hit in with_busy(busy, lambda: searcher.search(queries[0], k=K))()]
            exact = stored.astype(np.float64) @ queries[0].astype(np.float64)
            reference = np.lexsort((np.arange(len(exact)), -exact))[:K]
            figures["equals_float64_reference" + ("_busy" if busy else "")] = found == reference.tolist()
    return figures


def single_query(path: Path, matrix32: np.ndarray, queries: np.ndarray, repeats: int) -> dict[str, Any]:
    """One query, interleaved: the floor, clipwidgets (idle and busy kernel choice), numpy float32."""
    figures: dict[str, Any] = {}
    query = queries[0]
    with Searcher(path, ann="never") as searcher:
        stored = searcher.store.image_embeddings()
        calls = {"floor": read_floor(stored), "floor_one_thread": read_floor_one_thread(stored),
                 "search": with_busy(False, lambda: searcher.search(query, k=K)),
                 "search_busy": with_busy(True, lambda: searcher.search(query, k=K)),
                 "numpy_fp32": lambda: numpy_top_k(matrix32, queries[:1])}
        measured = interleaved(calls, repeats)
        for busy, name in ((False, "kernel"), (True, "kernel_busy")):
            with_busy(busy, lambda: searcher.search(query, k=K))()
            figures[name] = searcher.kernel
    floor = min(measured.pop("floor"), measured.pop("floor_one_thread"))
    figures["floor_ms"], figures["floor_median_ms"] = floor
    for name, (best, median) in measured.items():
        figures[f"{name}_ms"], figures[f"{name}_median_ms"] = best, median
    return figures


def faiss_flat(matrix32: np.ndarray, queries: np.ndarray, repeats: int) -> dict[str, Any]:
    """faiss IndexFlatIP on the same vectors, one query and a batch; numpy float32 on the batch."""
    import faiss

    figures: dict[str, Any] = {}
    numpy_batch, _ = best_and_median(lambda: numpy_top_k(matrix32, queries), max(2, repeats // 5))
    figures["numpy_fp32_batch_ms_per_query"] = numpy_batch / BATCH
    flat = faiss.IndexFlatIP(DIM)
    flat.add(matrix32)
    figures["faiss_flat_ms"], _ = best_and_median(lambda: flat.search(queries[:1], K), repeats)
    faiss_batch, _ = best_and_median(lambda: flat.search(queries, K), max(2, repeats // 5))
    figures["faiss_flat_batch_ms_per_query"] = faiss_batch / BATCH
    return figures


def exact_figures(count: int, folder: Path, repeats: int, *, with_faiss: bool = True) -> dict[str, Any]:
    """One size: clipwidgets, numpy float32, faiss IndexFlatIP and the floor, one query and a batch."""
    queries = unit_vectors(BATCH, seed=1).astype(np.float32)
    matrix = unit_vectors(count, seed=count)
    matrix32 = matrix.astype(np.float32)
    path = write_store(folder / f"exact_{count}.h5", matrix)
    figures = single_query(path, matrix32, queries, repeats)
    figures.update(ours_batch(path, queries, repeats))
    path.unlink()
    if with_faiss:
        figures.update(faiss_flat(matrix32, queries, repeats))
        figures["speedup_vs_faiss_flat"] = figures["faiss_flat_ms"] / figures["search_ms"]
    figures["ratio_vs_floor"] = figures["search_ms"] / figures["floor_ms"]
    figures["ratio_vs_numpy_fp32"] = figures["search_ms"] / figures["numpy_fp32_ms"]
    figures["busy_ratio_vs_numpy_fp32"] = figures["search_busy_ms"] / figures["numpy_fp32_ms"]
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
    for leftover in folder.glob(f"ann_{count}.h5*"):  # the store, its segment folder and the index
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
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
        vector = searcher.query_vector("a dog playing in the park")[0]
        calls = {"text_query": lambda: searcher.search(next(texts), k=K),
                 "encode_text": lambda: encoder.encode_texts([next(texts)]),
                 "search_only": lambda: searcher.search(vector, k=K)}
        measured = interleaved(calls, repeats * 3)  # back to back, encoder and search alone between
        cached_ms, _ = best_and_median(lambda: searcher.search("a dog playing in the park", k=K), repeats)
        spaced = []
        for _ in range(max(3, repeats // 2)):
            time.sleep(SPACED_S)
            start = time.perf_counter()
            searcher.search(next(texts), k=K)
            spaced.append((time.perf_counter() - start) * 1000)
        kernel = searcher.kernel
    path.unlink()
    figures: dict[str, Any] = {
        "images": FLICKR8K_IMAGES, "cached_text_query_ms": cached_ms, "search_kernel": kernel,
        "spaced_text_query_ms": min(spaced), "spaced_text_query_median_ms": statistics.median(spaced)}
    for name, (best, median) in measured.items():
        figures[f"{name}_ms"], figures[f"{name}_median_ms"] = best, median
    # > 1: the encoder and the search slow each other down when one follows the other
    figures["text_query_slowdown"] = figures["text_query_median_ms"] / (
        figures["encode_text_median_ms"] + figures["search_only_median_ms"])
    return figures


def exact_table(quick: bool, folder: Path, *, with_faiss: bool = True) -> dict[str, Any]:
    """Exact top-10 at 10k, 100k (and 1M) rows: figures per size, printed as one table."""
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    cpu_class = kernels.cpu_class()
    figures: dict[str, Any] = {"cpu_class": cpu_class,
                               "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    rows = []
    for count in sizes:
        # best of many at 10k: a call takes 0.3 ms and its best moves by tens of percent over 30 calls
        repeats = {10_000: 300, 100_000: 30}.get(count, 10) if not quick else 5
        load_before = os.getloadavg()[0]
        measured = exact_figures(count, folder, repeats, with_faiss=with_faiss)
        measured["load_average"] = (load_before + os.getloadavg()[0]) / 2
        figures.update({f"n{count}_{name}": value for name, value in measured.items()})
        rows.append([count, measured["floor_ms"], measured["search_ms"], measured["kernel"],
                     measured["ratio_vs_floor"], measured["numpy_fp32_ms"],
                     measured["ratio_vs_numpy_fp32"], measured["search_busy_ms"],
                     measured["search_busy_median_ms"], measured["numpy_fp32_median_ms"],
                     measured.get("faiss_flat_ms", "-"), measured["batch_ms_per_query"],
                     measured["equals_float64_reference"] and measured["equals_float64_reference_busy"],
                     measured["load_average"]])
    print_table(f"Exact top-10, kernels for CPU class {cpu_class} (torch {figures['torch_cpu_capability']}), "
                "best of interleaved repeats (ms); busy: the kernel a busy machine gets", rows,
                ["N", "floor", "clipwidgets", "kernel", "x floor", "numpy fp32", "/ numpy", "busy",
                 "busy median", "numpy median", "faiss flat", "ours batch/q", "= float64", "load"])
    return figures


def avx2_environment() -> dict[str, str]:
    """Environment variables that make this process's libraries use only AVX2 code (see the docstring)."""
    from numpy._core._multiarray_umath import __cpu_features__  # type: ignore[import-not-found]

    avx512 = [name for name, present in __cpu_features__.items()
              if present and (name.startswith("AVX512") or name == "X86_V4")]
    return {"ATEN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "ONEDNN_MAX_CPU_ISA": "AVX2", "NPY_DISABLE_CPU_FEATURES": " ".join(avx512),
            ENV_SEARCH_CPU: "avx2"}


def avx2_figures(quick: bool) -> dict[str, Any]:
    """Exact search as on an AVX2-only CPU, emulated in a child process (run() on an AVX512 CPU)."""
    environment = avx2_environment()
    with tempfile.TemporaryDirectory(prefix="bench_search_avx2_") as tmp:
        out = Path(tmp) / "avx2.json"
        command = [sys.executable, "-m", "benchmarks.bench_search", "--avx2-only", "--json", str(out)]
        subprocess.run(command + (["--quick"] if quick else []), env={**os.environ, **environment},
                       check=True, timeout=1800)
        figures = json.loads(out.read_text())
    figures["emulation"] = " ".join(f"{name}={value}" for name, value in environment.items())
    return figures


def run(quick: bool) -> dict[str, Any]:
    """Measure, print tables, return the figures."""
    figures: dict[str, Any] = {"dim": DIM, "k": K, "batch": BATCH, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        folder = Path(tmp)
        figures.update(exact_table(quick, folder))
        if kernels.cpu_class() == "avx512":
            figures.update({f"avx2_{name}": value for name, value in avx2_figures(quick).items()})
        ann = ann_figures(10_000 if quick else 200_000, folder, 20 if quick else 50)
        figures.update({f"ann_{name}": value for name, value in ann.items()})
        print_table("Approximate index (HNSW, clustered vectors)",
                    [[ann[key] for key in ("n", "build_s", "search_ms", "exact_search_ms", "recall_at_10")]],
                    ["N", "build s", "ms/query", "exact ms/query", "recall@10"])
        text = text_query_figures(folder, 5 if quick else 20, quick=quick)
        text["model"] = encoder_label = "tiny (quick mode)" if quick else "ViT-B-32-quickgelu, random weights"
        figures.update(text)
        print_table(f"Text query at {FLICKR8K_IMAGES} images, {encoder_label}, fp32, search kernel "
                    f"{text['search_kernel']} (ms; back to back = each query right after the last)",
                    [[text["text_query_ms"], text["text_query_median_ms"], text["encode_text_median_ms"],
                      text["search_only_median_ms"], text["text_query_slowdown"],
                      text["spaced_text_query_ms"], text["spaced_text_query_median_ms"],
                      text["cached_text_query_ms"], round(os.getloadavg()[0], 2)]],
                    ["back to back", "median", "encoder median", "search median", "/ (encoder + search)",
                     f"{SPACED_S} s apart", "median", "cached text", "load"])
    return figures


SCALE_ROWS = 10_000_000
SCALE_SEGMENTS = 10


def scale_vectors(rows: int = SCALE_ROWS) -> np.memmap:
    """A rows x 512 float16 memory map of unit vectors under benchmarks/results/cache/ (written once)."""
    path = RESULTS_DIR / "cache" / f"vectors_{rows}x{DIM}.f16"
    size = rows * DIM * 2
    if not path.is_file() or path.stat().st_size != size:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tmp")
        out = np.memmap(partial, dtype=np.float16, mode="w+", shape=(rows, DIM))
        step = 1 << 20
        for first in range(0, rows, step):
            out[first:first + step] = unit_vectors(min(step, rows - first), seed=first)
        out.flush()
        del out
        partial.replace(path)
    return np.memmap(path, dtype=np.float16, mode="r", shape=(rows, DIM))


def scale_figures(rows: int = SCALE_ROWS, repeats: int = 5) -> dict[str, Any]:
    """Exact top-10 over `rows` x 512 float16, memory-mapped in SCALE_SEGMENTS segments (the segmented
    store's layout), page cache warm, against reading the mapped bytes once, interleaved."""
    matrix = scale_vectors(rows)
    per = rows // SCALE_SEGMENTS
    blocks = [VectorBlock(matrix[first:first + per], np.arange(first, min(rows, first + per)))
              for first in range(0, rows, per)]
    index = ExactIndex(ImageScorer(BlockMatrix(blocks, rows, DIM)), rows)
    query = unit_vectors(1, seed=9).astype(np.float32)[0]
    floor = read_floor(np.asarray(matrix))
    floor()  # warm the page cache
    measured = paired(floor, lambda: index.top(query, K, None), repeats * 2)
    rows_found, _ = index.top(query, K, None)
    step = 1 << 16
    exact = np.concatenate([matrix[first:first + step].astype(np.float64) @ query.astype(np.float64)
                            for first in range(0, rows, step)])
    reference = np.lexsort((np.arange(rows), -exact))[:K]
    return {"rows": rows, "segments": len(blocks), "floor_ms": measured["floor_ms"],
            "floor_median_ms": measured["floor_median_ms"], "top10_ms": measured["ms"],
            "top10_median_ms": measured["median_ms"], "ratio_vs_floor": measured["ratio"],
            "ratio_best_vs_best": measured["ratio_best"],
            "equals_float64_reference": rows_found.tolist() == reference.tolist()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k and 100k only, few repeats")
    parser.add_argument("--scale", action="store_true", help="only the 10M x 512 memory-mapped exact search")
    parser.add_argument("--scale-rows", type=int, default=SCALE_ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--avx2-only", action="store_true",
                        help="only exact search, as on an AVX2-only CPU (emulated on an AVX512 CPU)")
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # --avx2-only's figures (for run())
    args = parser.parse_args(argv)
    if args.avx2_only:
        if os.environ.get(ENV_SEARCH_CPU) != "avx2":  # the libraries read it at import: start again
            given = sys.argv[1:] if argv is None else argv
            arguments = [sys.executable, "-m", "benchmarks.bench_search", *given]
            os.execve(sys.executable, arguments, {**os.environ, **avx2_environment()})
        with tempfile.TemporaryDirectory(prefix="bench_search_avx2_") as tmp:
            figures = exact_table(args.quick, Path(tmp), with_faiss=False)
        if args.json is not None:
            args.json.write_text(json.dumps(figures))
        print(f"wrote {write_json(RESULTS_DIR / 'search_avx2.json', figures)}")
        return
    if args.scale:
        scale = scale_figures(args.scale_rows)
        print_table(f"Exact top-10 over {scale['rows']:,} x {DIM} float16, {scale['segments']} "
                    "memory-mapped segments, warm page cache (ms)",
                    [[scale[key] for key in ("floor_ms", "top10_ms", "ratio_vs_floor", "ratio_best_vs_best",
                                             "floor_median_ms", "top10_median_ms",
                                             "equals_float64_reference")]],
                    ["floor", "top-10", "x floor (paired)", "best / best", "floor median", "top-10 median",
                     "= float64"])
        print(f"wrote {write_json(RESULTS_DIR / 'search_scale.json', scale)}")
        return
    figures = run(args.quick)
    print(f"wrote {write_json(RESULTS_DIR / 'search.json', figures)}")


if __name__ == "__main__":
    main()
