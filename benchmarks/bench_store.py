"""Store: write and load N x 512 float16 through EmbeddingStore vs np.save / np.load; commit cost."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS_DIR, print_table, timeit, write_json

DIM = 512
META = {"name": "bench", "pretrained": "random", "embed_dim": DIM}


def unit_rows(count: int, *, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """Random L2-normalised float16 rows, generated in chunks to keep memory low."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, DIM), np.float16)
    for start in range(0, count, chunk):
        block = rng.standard_normal((min(chunk, count - start), DIM), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def build_store(path: Path, rows: np.ndarray):
    """A store holding `rows` (one commit); returns (store open for writing, seconds the commit took)."""
    from clipwidgets.store import EmbeddingStore

    count = len(rows)
    store = EmbeddingStore.create(path, META, path.parent)
    start = time.perf_counter()
    store.add_images([f"images/{i:07d}.jpg" for i in range(count)], rows, sizes=np.full(count, 50_000),
                     mtimes_ns=np.arange(count), widths=np.full(count, 500), heights=np.full(count, 375))
    return store, time.perf_counter() - start


def read_embeddings_only(path: Path) -> np.ndarray:
    """The images/embeddings dataset alone, read with plain h5py (through the manifest's virtual dataset)."""
    import h5py

    with h5py.File(path, "r", locking=False) as f:
        dataset = f["images/embeddings"]
        out = np.empty(dataset.shape, dataset.dtype)
        dataset.read_direct(out)
    return out


def commit_cost(folder: Path, rows_in_store: int, *, repeats: int) -> float:
    """Seconds to commit a 32-row batch to a store already holding `rows_in_store` rows."""
    store, _ = build_store(folder / f"commit-{rows_in_store}.h5", unit_rows(rows_in_store, seed=1))
    batch = unit_rows(32, seed=2)
    counter = iter(range(10**9))

    def add_batch() -> None:
        first = next(counter) * 32
        store.add_images([f"new/{first + i:07d}.jpg" for i in range(32)], batch, sizes=[1] * 32,
                         mtimes_ns=[1] * 32, widths=[1] * 32, heights=[1] * 32)

    seconds = timeit(add_batch, repeats=repeats, warmup=1)
    store.close()
    return seconds


def run(quick: bool, rows: int | None = None) -> dict[str, Any]:
    """Load and write times of the store vs .npy for N x 512 float16 (quick: 100k rows, else 1M)."""
    from clipwidgets.store import EmbeddingStore, segments_folder

    count = rows or (100_000 if quick else 1_000_000)
    repeats = 3 if quick else 5
    figures: dict[str, Any] = {"rows": count, "dim": DIM, "dtype": "float16"}
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        folder = Path(tmp)
        embeddings = unit_rows(count)
        npy = folder / "image_embeddings.npy"
        figures["npy_save_s"] = timeit(lambda: np.save(npy, embeddings), repeats=1, warmup=0)
        store, figures["store_write_s"] = build_store(folder / "store.h5", embeddings)
        store.close()
        h5 = folder / "store.h5"
        segment_bytes = sum(p.stat().st_size for p in segments_folder(h5).iterdir())
        figures["file_mb"] = (h5.stat().st_size + segment_bytes) / 2**20
        figures["npy_load_s"] = timeit(lambda: np.load(npy), repeats=repeats)
        figures["store_embeddings_read_s"] = timeit(lambda: read_embeddings_only(h5), repeats=repeats)
        figures["store_open_s"] = timeit(lambda: EmbeddingStore.open(h5), repeats=repeats)
        loaded = EmbeddingStore.open(h5).image_embeddings()
        if not np.array_equal(loaded, embeddings):
            raise RuntimeError("EmbeddingStore did not give back the rows it was given")
        npy_load_s = figures["npy_load_s"]
        figures["ratio_embeddings_read_vs_npload"] = figures["store_embeddings_read_s"] / npy_load_s
        figures["ratio_open_vs_npload"] = figures["store_open_s"] / npy_load_s
        for size in (10_000,) if quick else (10_000, 100_000):
            figures[f"commit_32_rows_into_{size}_s"] = commit_cost(folder, size, repeats=repeats)
    table = [
        ["np.save", figures["npy_save_s"], ""],
        ["store write (validate + commit + fsync)", figures["store_write_s"], ""],
        ["np.load", figures["npy_load_s"], "1.00"],
        ["plain h5py read of images/embeddings (virtual dataset)", figures["store_embeddings_read_s"],
         f"{figures['ratio_embeddings_read_vs_npload']:.2f}"],
        ["EmbeddingStore.open (memory-mapped: reads the manifest only)", figures["store_open_s"],
         f"{figures['ratio_open_vs_npload']:.2f}"],
    ]
    table += [[f"commit of 32 rows into a {key.split('_')[4]}-row store", value, ""]
              for key, value in figures.items() if key.startswith("commit_")]
    print_table(f"Store: {count:,} x {DIM} float16 ({figures['file_mb']:.0f} MB)", table,
                ["operation", "seconds", "vs np.load"])
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, help="rows to write and load (default 1M, quick 100k)")
    args = parser.parse_args(argv)
    path = write_json(RESULTS_DIR / "store.json", run(args.quick, args.rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
