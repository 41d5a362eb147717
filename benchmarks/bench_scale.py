"""Scale: a 10M x 512 float16 store, commits that cost the batch, memory-mapped opens, SIGKILLs.

    python -m benchmarks.bench_scale [--quick] [--rows N] [--kills 25] [--only commit open vds search kills]

The store is generated once through the store's own writer (commits of 250k rows, then a tiered
`compact()`) and cached as benchmarks/results/cache/scale_<rows>.h5 (+ .h5.d/, ~10 GB at 10M); later
runs reuse it. Hook for other benchmarks: `cached_store(rows)` returns its path (exact top-10 and ANN
at 10M are measured by bench_search over it). Measured, each in a fresh process:

- commit of 32 rows into the big store and into a 10k-row one (median, p90, max; their ratio);
- the writer's peak RSS over those commits;
- open in a fresh process (seconds and RSS after open);
- exact top-10 against reading the segments once (the memory-bandwidth floor), page cache warm: the
  median ratio of each search to the floor calls just before and after it (bench_search.paired);
- the approximate index (ivfpq): build time, CPU, memory and size; recall@10 and latency of 100
  queries drawn from the stored rows' clusters, against exact search: a first pass in the fresh
  process (whose re-scoring also maps the pages it reads), then at several probe settings;
- SIGKILL at random moments during commits and during full compactions (whole-commit prefix kept).

The commits are rolled back afterwards by restoring the manifest (the commit's new segments are then
unlisted, and the next writer deletes them), so the cache stays as generated.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS_DIR, print_table, write_json

DIM = 512
META = {"name": "bench", "pretrained": "random", "embed_dim": DIM}
CACHE_DIR = RESULTS_DIR / "cache"
GENERATE_ROWS = 250_000  # rows per commit while generating (memory: ~1 GB of float32 at a time)
REPO = Path(__file__).resolve().parents[1]


CENTRES = 4096  # clusters of the generated vectors (see `rows_between`)
SHARED = 0.7  # weight of the direction every centre shares (CLIP embeddings are far from isotropic)
SPREAD = 0.035  # per-coordinate noise around a centre: cosine ~0.78 to it, ~0.6 between cluster mates


@functools.lru_cache(maxsize=1)
def _clusters() -> tuple[np.ndarray, np.ndarray]:
    """(CENTRES unit centres, their probabilities): uneven cluster sizes (log-normal weights)."""
    rng = np.random.default_rng(20261127)
    shared = rng.standard_normal(DIM).astype(np.float32)
    own = rng.standard_normal((CENTRES, DIM), dtype=np.float32)
    centres = SHARED * shared / np.linalg.norm(shared) + own / np.linalg.norm(own, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 1.0, CENTRES)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True), weights / weights.sum()


def rows_between(start: int, stop: int) -> np.ndarray:
    """Deterministic unit rows start..stop (float32), clustered like real embeddings.

    Each row is a centre (one of CENTRES, drawn with uneven weights; the centres share one direction,
    so unrelated rows have cosine ~0.2) plus Gaussian noise (SPREAD per coordinate), normalised.
    Uniform random vectors have no neighbour structure and make every approximate index look broken;
    queries for the approximate index are drawn the same way from rows no store holds.
    """
    centres, weights = _clusters()
    rng = np.random.default_rng(start)
    labels = rng.choice(CENTRES, size=stop - start, p=weights)
    block = centres[labels] + SPREAD * rng.standard_normal((stop - start, DIM), dtype=np.float32)
    return block / np.linalg.norm(block, axis=1, keepdims=True)


def path_of(i: int) -> str:
    return f"photos/{i // 10_000:05d}/img_{i:08d}.jpg"


def cached_store(rows: int) -> Path:
    """The path of a store of `rows` random 512-d rows (generated on first use, then reused)."""
    from clipwidgets.store import EmbeddingStore, segments_folder

    path = CACHE_DIR / f"scale_{rows}.h5"
    done = path.with_name(path.name + ".json")
    if path.exists() and done.exists():
        return path
    path.unlink(missing_ok=True)
    shutil.rmtree(segments_folder(path), ignore_errors=True)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with EmbeddingStore.create(path, META, CACHE_DIR / "scale_images") as store:
        for start in range(0, rows, GENERATE_ROWS):
            stop = min(rows, start + GENERATE_ROWS)
            count = stop - start
            store.add_images([path_of(i) for i in range(start, stop)], rows_between(start, stop),
                             sizes=np.full(count, 50_000), mtimes_ns=np.arange(start, stop),
                             widths=np.full(count, 500), heights=np.full(count, 375))
        generated = time.perf_counter() - started
        store.compact()
        info = store.info()
    done.write_text(json.dumps({"rows": rows, "generate_s": generated,
                                "compact_s": time.perf_counter() - started - generated,
                                "segments": info["segments"], "bytes": info["size_bytes"]}))
    return path


def _child(code: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    """Run `code` in a fresh interpreter; it prints one JSON line last."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"child failed ({result.returncode}): {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


COMMITS = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from clipwidgets.store import EmbeddingStore
    from benchmarks.bench_scale import rows_between, path_of

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

    path, commits = sys.argv[1], int(sys.argv[2])
    store = EmbeddingStore.open(path, "a")
    rss_open = rss_mb()
    first = 10**9
    times, cpu = [], []
    for c in range(commits):
        start = first + 32 * c
        started, cpu_started = time.perf_counter(), time.process_time()
        store.add_images([path_of(i) for i in range(start, start + 32)], rows_between(start, start + 32),
                         sizes=[1] * 32, mtimes_ns=[1] * 32, widths=[1] * 32, heights=[1] * 32)
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    segments = store.info()["segments"]
    store.close()
    peak = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print(json.dumps({"times": times, "cpu": cpu, "rss_after_open_mb": rss_open, "peak_rss_mb": peak,
                      "segments_after": segments}))
""")

OPEN = textwrap.dedent("""
    import json, sys, time
    started = time.perf_counter()
    from clipwidgets.store import EmbeddingStore
    imported = time.perf_counter()
    store = EmbeddingStore.open(sys.argv[1])
    opened = time.perf_counter()
    count, path = store.num_images, store.image_path(store.num_images - 1)
    rss = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmRSS"))
    print(json.dumps({"import_s": imported - started, "open_s": opened - imported, "rss_mb": rss,
                      "images": count, "segments": len(store.vector_blocks()), "last": path}))
""")


def commit_figures(path: Path, commits: int) -> dict[str, Any]:
    """Time `commits` 32-row commits into the store at `path` in a fresh writer, then roll them back."""
    backup = path.with_name(path.name + ".bench-backup")
    shutil.copy2(path, backup)
    try:
        result = _child(COMMITS, str(path), str(commits))
    finally:
        os.replace(backup, path)  # the manifest as before: the commits' segments are unlisted now
    from clipwidgets.store import EmbeddingStore

    EmbeddingStore.open(path, "a").close()  # a writer deletes the unlisted segments
    times = np.array(result["times"])
    return {"median_s": float(np.median(times)), "p90_s": float(np.percentile(times, 90)),
            "cpu_median_s": float(np.median(result["cpu"])),
            "max_s": float(times.max()), "peak_rss_mb": result["peak_rss_mb"],
            "rss_after_open_mb": result["rss_after_open_mb"], "segments_after": result["segments_after"]}


def open_figures(path: Path, repeats: int) -> dict[str, Any]:
    runs = [_child(OPEN, str(path)) for _ in range(repeats)]
    best = sorted(runs, key=lambda r: r["open_s"])[len(runs) // 2]
    return {**best, "open_s_all": [r["open_s"] for r in runs]}


KILLED = textwrap.dedent("""
    import sys
    import numpy as np
    from clipwidgets.store import EmbeddingStore
    from benchmarks.bench_scale import META, rows_between, path_of

    path, root, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    store = EmbeddingStore.open_or_create(path, META, root)
    print(store.num_images, flush=True)
    while True:
        n = store.num_images
        store.add_images([path_of(i) for i in range(n, n + 32)], rows_between(n, n + 32),
                         sizes=[1] * 32, mtimes_ns=[1] * 32, widths=[1] * 32, heights=[1] * 32)
        print(store.num_images, flush=True)
        if mode == "compact":
            store.compact(full=True)
            print(store.num_images, flush=True)
""")


def _check_prefix(path: Path, seed_rows: int) -> int:
    """The store holds the seed rows plus whole 32-row commits, each exactly as the writer made it."""
    from clipwidgets.store import EmbeddingStore

    with EmbeddingStore.open(path) as store:
        n = store.num_images
        if n < seed_rows or (n - seed_rows) % 32 or store.image_path(n - 1) != path_of(n - 1):
            raise RuntimeError(f"torn commit: the store holds {n} rows")
        vectors = store.image_embeddings()
        for start in range(seed_rows, n, 32):
            expected = rows_between(start, start + 32).astype(np.float16)
            if not np.array_equal(vectors[start:start + 32], expected):
                raise RuntimeError(f"rows {start}..{start + 32} differ from what was committed")
    return n


def kill_figures(rows: int, kills: int, mode: str, *, seed: int) -> dict[str, Any]:
    """SIGKILL `kills` writers at random moments (commits, or full compactions after each commit)."""
    from clipwidgets.store import EmbeddingStore

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bench_scale_kill_", dir=CACHE_DIR) as tmp:
        path, root = Path(tmp) / "killed.h5", Path(tmp) / "images"
        with EmbeddingStore.create(path, META, root) as store:
            for start in range(0, rows, 32 * 1024):
                stop = min(rows, start + 32 * 1024)
                store.add_images([path_of(i) for i in range(start, stop)], rows_between(start, stop),
                                 sizes=[1] * (stop - start), mtimes_ns=[1] * (stop - start),
                                 widths=[1] * (stop - start), heights=[1] * (stop - start))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        reported = rows
        for _ in range(kills):
            writer = subprocess.Popen([sys.executable, "-c", KILLED, str(path), str(root), mode],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            writer.stdout.readline()
            time.sleep(rng.uniform(0.0, 1.0 if mode == "compact" else 0.3))
            writer.send_signal(signal.SIGKILL)
            output = writer.stdout.read()
            writer.wait()
            writer.stdout.close()
            reported = max([reported, *(int(line) for line in output.split())])
            count = _check_prefix(path, rows)
            if not reported <= count <= reported + 32:
                raise RuntimeError(f"lost commits: reported {reported}, store holds {count}")
            reported = count
        EmbeddingStore.open(path, "a").close()
        return {"kills": kills, "rows_at_end": reported, "prefix_ok": True}


ANN_BUILD = textwrap.dedent("""
    import json, os, sys, threading, time
    from clipwidgets.ann import build_ann_index
    from clipwidgets.store import EmbeddingStore

    def status(key):
        return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith(key))

    peak_anon, done = [0.0], threading.Event()
    def sample():  # anonymous memory: RSS also counts the mapped segments' pages (page cache)
        while not done.wait(0.2):
            peak_anon[0] = max(peak_anon[0], status("RssAnon"))
    threading.Thread(target=sample, daemon=True).start()
    store = EmbeddingStore.open(sys.argv[1])
    started, cpu = time.perf_counter(), time.process_time()
    written = build_ann_index(store, kind=sys.argv[2])
    build_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    done.set()
    print(json.dumps({"build_s": build_s, "cpu_s": cpu_s, "peak_rss_mb": status("VmHWM"),
                      "peak_anon_mb": peak_anon[0], "index_mb": os.path.getsize(written) / 2**20,
                      "kind": sys.argv[2], "loadavg": open("/proc/loadavg").read().split()[:3]}))
""")

SEARCH = textwrap.dedent("""
    import json, statistics, sys, time
    import numpy as np
    from benchmarks.bench_scale import query_rows
    from benchmarks.bench_search import paired, read_floor
    from clipwidgets.searcher import Searcher

    path, count, ann = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "ann"
    queries = query_rows(count)
    out = {}
    with Searcher(path, ann="never") as exact:
        blocks = [np.asarray(block.vectors) for block in exact.store.vector_blocks()]
        floors = [read_floor(block) for block in blocks]
        def floor():
            for read in floors:
                read()
        floor()  # warms the page cache: the whole store is read once
        query = queries[0]
        measured = paired(floor, lambda: exact.search(query, k=10), 12)
        out.update(segments=len(blocks), floor_ms=measured["floor_ms"],
                   floor_median_ms=measured["floor_median_ms"], exact_ms=measured["ms"],
                   exact_median_ms=measured["median_ms"],
                   exact_vs_floor=measured["ratio"], exact_best_vs_best=measured["ratio_best"])
        if ann:
            import clipwidgets.ann as ann_module
            truth = [[hit.index for hit in exact.search(q, k=10)] for q in queries]
            with Searcher(path, ann="always") as approximate:
                def timed_pass():
                    times, found = [], 0
                    for q, best in zip(queries, truth):
                        started = time.perf_counter()
                        hits = approximate.search(q, k=10)
                        times.append(1000 * (time.perf_counter() - started))
                        found += len({hit.index for hit in hits} & set(best))
                    return dict(ms_median=statistics.median(times), ms_p90=float(np.percentile(times, 90)),
                                recall_at_10=found / (10 * len(queries)))
                # the first pass of a fresh process also maps the pages its re-scoring touches
                out["ann_first_pass"] = timed_pass()
                index = approximate._index.ann.index
                settings = [(getattr(index, "nprobe", 0), ann_module.IVFPQ_CANDIDATES)]  # the defaults
                if approximate._index.ann.kind == "ivfpq":
                    settings += [(8, 2048), (32, 2048), (16, 1024), (16, 4096)]
                for probes, candidates in settings:
                    if approximate._index.ann.kind == "ivfpq":
                        index.nprobe = probes
                        ann_module.IVFPQ_CANDIDATES = candidates
                    setting = dict(probes=probes, candidates=candidates)
                    out.setdefault("ann", []).append({**setting, **timed_pass()})
            first = out["ann"][0]
            out.update(ann_ms_median=first["ms_median"], ann_ms_p90=first["ms_p90"],
                       recall_at_10=first["recall_at_10"], queries=len(queries),
                       ann_first_pass_ms_median=out["ann_first_pass"]["ms_median"],
                       ann_first_pass_ms_p90=out["ann_first_pass"]["ms_p90"])
    out["rss_mb"] = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print(json.dumps(out))
""")


def query_rows(count: int) -> np.ndarray:
    """`count` queries from the stored rows' distribution (same clusters), none of them stored."""
    return rows_between(10**12, 10**12 + count)


def search_figures(path: Path, *, queries: int, ann_kind: str | None) -> dict[str, Any]:
    """Exact top-10 against the read floor (page cache warm), and, with `ann_kind`, the approximate
    index: its build (time, CPU, peak RSS, size) and recall@10 / latency over `queries` queries."""
    figures: dict[str, Any] = {}
    if ann_kind:
        figures["ann_build"] = _child(ANN_BUILD, str(path), ann_kind, timeout=7200)
    figures.update(_child(SEARCH, str(path), str(queries), "ann" if ann_kind else "exact", timeout=7200))
    return figures


def long_run_figures(rows: int, batch: int) -> dict[str, Any]:
    """An indexing-like run without compact(): `rows` rows in commits of `batch`, into a new store;
    the segment count after every commit, the slowest commits, and the bytes written per byte kept."""
    from clipwidgets.store import EmbeddingStore, files

    written = [0]
    real_new_file = files._new_file

    def counting(*args: Any, **kwargs: Any) -> Any:
        segment = real_new_file(*args, **kwargs)
        written[0] += segment.file_bytes
        return segment
    files._new_file = counting
    counts, times = [], []
    try:
        with (tempfile.TemporaryDirectory(prefix="bench_scale_long_", dir=CACHE_DIR) as tmp,
              EmbeddingStore.create(Path(tmp) / "long.h5", META, Path(tmp) / "images") as store):
            for start in range(0, rows, batch):
                stop = min(rows, start + batch)
                vectors = rows_between(start, stop)
                started = time.perf_counter()
                store.add_images([path_of(i) for i in range(start, stop)], vectors,
                                 sizes=[1] * (stop - start), mtimes_ns=[1] * (stop - start),
                                 widths=[1] * (stop - start), heights=[1] * (stop - start))
                times.append(time.perf_counter() - started)
                counts.append(store.info()["segments"])
            final = store.info()
    finally:
        files._new_file = real_new_file
    times_ms = np.array(times) * 1000
    return {"rows": rows, "batch": batch, "commits": len(times), "segments_final": counts[-1],
            "segments_max": max(counts), "segment_bytes": final["segment_bytes"],
            "written_per_stored_byte": written[0] / final["segment_bytes"],
            "commit_median_ms": float(np.median(times_ms)),
            "commit_p99_ms": float(np.percentile(times_ms, 99)),
            "commit_max_ms": float(times_ms.max()), "commits_over_1s": int((times_ms > 1000).sum()),
            "total_s": float(times_ms.sum() / 1000), "segment_counts_every_100": counts[::100]}


def vds_figures(path: Path, rows: int) -> dict[str, Any]:
    """Why virtual datasets: the manifest's write time by segment count (the store's first segment
    listed 10, 40 and 160 times), and reading the first `rows` rows through the virtual dataset
    against copying them from the memory maps."""
    import dataclasses

    import h5py

    from clipwidgets.store import EmbeddingStore
    from clipwidgets.store.manifest import write_manifest

    store = EmbeddingStore.open(path)
    snap = store._view
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_scale_vds_") as tmp:
        for count in (10, 40, 160):
            segments = tuple(dataclasses.replace(snap.segments[0], name=f"seg-{i:016x}-00000000.h5")
                             for i in range(count))
            listed = snap.edited(segments=segments, dead=np.zeros(0, np.int64))
            times = []
            for _ in range(5):
                started = time.perf_counter()
                write_manifest(Path(tmp) / "manifest.h5", store.path, store._attrs, listed)
                times.append(time.perf_counter() - started)
            figures[f"manifest_write_ms_{count}_segments"] = 1000 * float(np.median(times))
    with h5py.File(path, "r") as f:
        started = time.perf_counter()
        dataset = f["images/embeddings"]
        figures["h5py_open_virtual_ms"] = 1000 * (time.perf_counter() - started)
        for label in ("first", "second"):
            started = time.perf_counter()
            through_vds = dataset[:rows]
            figures[f"virtual_read_s_{label}"] = time.perf_counter() - started
    started = time.perf_counter()
    parts, left = [], rows
    for block in store.vector_blocks():
        take = min(left, len(block.vectors))
        parts.append(np.array(block.vectors[:take]))
        left -= take
        if not left:
            break
    mapped = np.concatenate(parts)
    figures["memmap_copy_s"] = time.perf_counter() - started
    if not np.array_equal(mapped, through_vds):
        raise RuntimeError("the virtual dataset and the memory maps disagree")
    return figures


PARTS = ("commit", "open", "vds", "search", "kills")  # and "long" (--only long): minutes, not in the suite


def run(quick: bool, rows: int | None = None, kills: int | None = None,
        parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Scale figures for `rows` (quick: 100k, else 10M) against a 10k-row store; `parts` picks measures."""
    rows = rows or (100_000 if quick else 10_000_000)
    kills = kills if kills is not None else (5 if quick else 25)
    commits = 60 if quick else 300
    figures: dict[str, Any] = {"rows": rows, "dim": DIM, "parts": list(parts), "quick": quick}
    big = cached_store(rows)
    figures["generation"] = json.loads(big.with_name(big.name + ".json").read_text())
    table: list[list[Any]] = []
    if "commit" in parts:
        small = cached_store(10_000)
        for label, path in (("big", big), ("10k", small)):
            figures[f"commit_{label}"] = commit_figures(path, commits)
        big_commit, small_commit = figures["commit_big"], figures["commit_10k"]
        figures["commit_32_median_ms"] = big_commit["median_s"] * 1000
        figures["commit_ratio_big_vs_10k"] = big_commit["median_s"] / small_commit["median_s"]
        figures["writer_peak_rss_mb"] = big_commit["peak_rss_mb"]

        def ms(commit: dict[str, Any]) -> str:
            return " / ".join(f"{commit[key] * 1e3:.1f}" for key in ("median_s", "p90_s", "max_s"))
        table += [
            ["commit of 32 rows, median / p90 / max (ms)", ms(big_commit), f"10k rows: {ms(small_commit)}"],
            ["commit median, big / 10k", f"{figures['commit_ratio_big_vs_10k']:.2f}", "target <= 2"],
            ["CPU time per commit, median (ms)", f"{big_commit['cpu_median_s'] * 1e3:.1f}",
             f"10k rows: {small_commit['cpu_median_s'] * 1e3:.1f}; the rest is 4 fsyncs and waiting"],
            ["writer peak RSS (MiB)", f"{figures['writer_peak_rss_mb']:.0f}", "target <= 1 GB"]]
    if "open" in parts:
        figures["open"] = open_figures(big, 3)
        figures["open_s"], figures["open_rss_mb"] = figures["open"]["open_s"], figures["open"]["rss_mb"]
        table += [["open in a fresh process (s)", f"{figures['open_s']:.3f}",
                   f"imports before it: {figures['open']['import_s']:.2f} s"],
                  ["RSS after open (MiB)", f"{figures['open_rss_mb']:.0f}", "target <= 300 MB"]]
    if "vds" in parts:
        figures["vds"] = vds_figures(big, min(rows, 1_000_000))
    if "search" in parts:
        searched = cached_store(10_000) if quick else big  # quick: the scripts, not the claims
        found = search_figures(searched, queries=20 if quick else 100, ann_kind="ivfpq")
        figures["search"] = found
        build = found["ann_build"]
        figures.update(exact_vs_floor=found["exact_vs_floor"], ann_recall_at_10=found["recall_at_10"],
                       ann_ms_median=found["ann_ms_median"], ann_build_s=build["build_s"])
        table += [
            ["exact top-10 / read floor (median of paired calls)", f"{found['exact_vs_floor']:.2f}",
             f"best {found['exact_ms']:.0f} / {found['floor_ms']:.0f} ms "
             f"({found['exact_best_vs_best']:.2f}); target <= 1.3"],
            ["ivfpq recall@10 / median / p90 ms per query (pages mapped)",
             f"{found['recall_at_10']:.3f} / {found['ann_ms_median']:.2f} / {found['ann_ms_p90']:.2f}",
             "target >= 0.95 / <= 10 ms"],
            ["ivfpq first pass in a fresh process: median / p90 ms",
             f"{found['ann_first_pass_ms_median']:.2f} / {found['ann_first_pass_ms_p90']:.2f}",
             "its re-scoring also maps the pages it touches"],
            ["ivfpq build: s / peak anonymous MiB / index MiB",
             f"{build['build_s']:.0f} / {build['peak_anon_mb']:.0f} / {build['index_mb']:.0f}",
             f"CPU {build['cpu_s']:.0f} s"]]
    if "long" in parts:
        figures["long_run"] = long = long_run_figures(20_000 if quick else 1_000_000, 128)
        table.append(["long run without compact: segments final / max, bytes written per byte kept",
                      f"{long['segments_final']} / {long['segments_max']}, "
                      f"{long['written_per_stored_byte']:.1f}",
                      f"{long['commits']} x {long['batch']} rows, slowest {long['commit_max_ms']:.0f} ms"])
    if "kills" in parts:
        kill_rows = 20_000 if quick else 200_000
        figures["kills_commit"] = kill_figures(kill_rows, kills, "run", seed=1)
        figures["kills_compact"] = kill_figures(kill_rows, kills, "compact", seed=2)
        figures["kills_commit_ok"] = figures["kills_commit"]["kills"]  # kill_figures raises on a torn store
        figures["kills_compact_ok"] = figures["kills_compact"]["kills"]
        table.append(["SIGKILL during commits / compactions", f"{kills} / {kills}",
                      "whole-commit prefix each time"])
    segments = figures["generation"]["segments"]
    print_table(f"Scale: {rows:,} x {DIM} float16 store ({segments} segments)", table,
                ["measure", "figure", "note"])
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, help="rows of the big store (default 10M, quick 100k)")
    parser.add_argument("--kills", type=int, help="SIGKILLs during commits and during compactions each")
    parser.add_argument("--only", nargs="+", choices=(*PARTS, "long"), default=list(PARTS),
                        help="measures to run")
    args = parser.parse_args(argv)
    name = "scale.json" if args.only == list(PARTS) else f"scale_{'_'.join(args.only)}.json"
    path = write_json(RESULTS_DIR / name, run(args.quick, args.rows, args.kills, tuple(args.only)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
