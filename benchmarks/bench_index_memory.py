"""Peak memory of `clipwidgets index` on a big folder: the issue's 10,000-image memory target.

Runs the real CLI in a subprocess per precision, on generated 500x375 JPEGs, with random ViT-B/32
weights loaded from a safetensors checkpoint (the released weights' loading path), and samples the
process tree every 0.2 s: the indexer's RSS plus its decoding workers' USS. Not part of `run.py`'s
suite: it takes about 12 minutes on 2 cores (fp32 ~8, bf16 ~3). bf16 is skipped, with a note, on CPUs
without native bf16.

    python -m benchmarks.bench_index_memory [--images 10000] [--folder DIR] [--precision fp32 bf16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_indexing import photo_folder
from benchmarks.common import (
    RESULTS_DIR,
    TreeMemorySampler,
    bf16_skip_note,
    cpu_supports_bf16,
    random_vit_b32_checkpoint,
    write_json,
)


def measure(folder: Path, precision: str) -> dict[str, float]:
    """Index `folder` into a new store with the CLI at `precision`; its rate and peak tree memory."""
    store = RESULTS_DIR / "cache" / f"index_memory_{precision}.h5"
    store.unlink(missing_ok=True)
    command = [sys.executable, "-m", "clipwidgets.cli", "index", str(folder), "--store", str(store),
               "--model", "ViT-B-32-quickgelu", "--pretrained", str(random_vit_b32_checkpoint()),
               "--precision", precision, "--json"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    with TreeMemorySampler(process.pid, interval_s=0.2) as sampler:
        output, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"clipwidgets index ({precision}) failed with exit status {process.returncode}")
    report = json.loads(output)
    store.unlink()
    return {"indexed": report["indexed"], "skipped": report["skipped"],
            "images_per_second": report["images_per_second"], "peak_tree_mib": sampler.peak_mb,
            "wall_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="generated photos (cached)")
    parser.add_argument("--folder", type=Path, help="index this folder instead of generated photos")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = parser.parse_args(argv)
    folder = args.folder or photo_folder(args.images)
    figures = {"folder": str(folder)}
    for precision in args.precision:
        if precision == "bf16" and not cpu_supports_bf16():
            figures["bf16_note"] = bf16_skip_note()
            print(figures["bf16_note"], flush=True)
            continue
        figures[precision] = measure(folder, precision)
        print(precision, json.dumps(figures[precision]), flush=True)
    print(f"wrote {write_json(RESULTS_DIR / 'index_memory.json', figures)}")


if __name__ == "__main__":
    main()
