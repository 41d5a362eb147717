"""Indexing end to end on generated Flickr8k-like JPEGs, against model-only and a naive loop, in one run.

One subprocess per precision (fp32 and bf16; bf16 is skipped, with a note, on CPUs without native
bf16, where torch would emulate it for hours), so each has its own memory. In it,
model-only baselines alternate with clipwidgets runs (B E B E B E B, 3 rounds in full mode): each
round's ratio compares its run with the mean of the baselines either side, measured under the same
machine load, and the figure reported is the median round (this machine's speed drifts by several
percent from minute to minute; all rounds are kept in the JSON):
- clipwidgets: `index_images` into a fresh store, model loaded and warm. The time spent inside the
  model during the run is recorded too: the model's own speed there (it should match model only) and
  its share of the run (what the rest of the pipeline costs, free of drift between measurements).
  Peak memory: the process's high-water mark after loading the model, or its RSS plus its decoding
  workers' USS while indexing, sampled in one more run (sampling takes CPU time, so timed runs have none);
- model only: `encode_pixels` on pre-decoded, preprocessed batches of 32 (the ceiling);
- naive loop (fp32 process only): PIL open -> `encoder.preprocess` -> encode one image at a time, before
  the first round and after the last.
Then bf16 vs fp32 agreement: cosine of the same images' embeddings and top-10 overlap of text searches.

Full mode uses ViT-B/32 with random weights (same compute as the released weights); quick mode uses the
offline `tiny` model on a few dozen images, to keep the script working, not to measure the claims.
`--device cuda` measures fp32 and fp16 (the CUDA default) on the GPU instead of fp32 and bf16 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    TreeMemorySampler,
    benchmark_encoder,
    bf16_skip_note,
    cpu_supports_bf16,
    peak_rss_mb,
    print_table,
    timeit,
    to_jsonable,
    write_json,
)

CACHE_DIR = RESULTS_DIR / "cache"
BATCH_SIZE = 32
ROUNDS = 3  # full mode: B E B E B E B
QUERIES = ("a dog running on the grass", "two children playing in the water", "a man riding a bicycle",
           "a red car parked on the street", "people walking in a crowded market", "a cat sleeping on a sofa",
           "a snowy mountain at sunset", "a boy jumping into a swimming pool", "a girl in a pink dress",
           "a black and white dog catching a frisbee", "a surfer riding a wave", "a bird on a branch")


def photo_folder(count: int) -> Path:
    """A cached folder of `count` generated 500x375 JPEGs (made once, reused by later runs)."""
    from clipwidgets.synthetic import make_photos

    folder = CACHE_DIR / f"photos_{count}"
    if len(list(folder.glob("*.jpg"))) != count:
        shutil.rmtree(folder, ignore_errors=True)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        make_photos(partial, count)
        partial.rename(folder)
    return folder


def model_only_rate(encoder, paths: list[Path], *, repeats: int, batch_size: int = BATCH_SIZE) -> float:
    """Images/s of the model alone on batches decoded and preprocessed beforehand."""
    import torch
    from PIL import Image

    pixels = torch.stack([encoder.preprocess(Image.open(path).convert("RGB")) for path in paths])
    batches = list(torch.split(pixels, batch_size))
    seconds = timeit(lambda: [encoder.encode_pixels(batch) for batch in batches], repeats=repeats, warmup=1)
    return len(paths) / seconds


def naive_rate(encoder, paths: list[Path]) -> float:
    """Images/s of the obvious loop: open, preprocess, encode, one image at a time (after one warm-up)."""
    from PIL import Image

    def embed(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return encoder.encode_images([image.convert("RGB")])

    embed(paths[0])
    start = time.perf_counter()
    for path in paths:
        embed(path)
    return len(paths) / (time.perf_counter() - start)


def measure_in_subprocess(folder: Path, store_path: Path, precision: str, *, quick: bool, sample: int,
                          naive: bool, device: str, batch_size: int) -> dict[str, Any]:
    """Run `measure_job` in a fresh interpreter (its memory and threads are its own); returns its figures."""
    job = json.dumps({"folder": str(folder), "store": str(store_path), "precision": precision,
                      "quick": quick, "sample": sample, "naive": naive, "device": device,
                      "batch_size": batch_size, "rounds": 1 if quick else ROUNDS})
    command = [sys.executable, "-m", "benchmarks.bench_indexing", "--job", job]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"indexing subprocess ({precision}) failed (exit status {completed.returncode})")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure_job(job: dict[str, Any]) -> dict[str, Any]:
    """Inside the subprocess: model-only baselines alternating with `index_images` runs into a new store."""
    import torch

    from clipwidgets.indexing import index_images

    batch_size = job["batch_size"]
    encoder = benchmark_encoder(job["precision"], quick=job["quick"], device=job["device"])
    height, width = encoder.meta["preprocess"]["image_size"]
    encoder.encode_pixels(torch.zeros(batch_size, 3, height, width))  # warm-up, as model-only gets
    load_peak_mb = peak_rss_mb()
    paths = sorted(Path(job["folder"]).glob("*.jpg"))
    sample = paths[: job["sample"]]
    rates = {"quick": job["quick"], "batch_size": batch_size}
    baselines = [baseline_rates(encoder, sample, naive=job["naive"], **rates)]
    runs = []
    for round_number in range(job["rounds"]):
        last = round_number == job["rounds"] - 1
        runs.append(timed_index_run(encoder, job["folder"], Path(job["store"]), batch_size))
        baselines.append(baseline_rates(encoder, sample, naive=job["naive"] and last, **rates))
    sampled_store = Path(job["store"]).with_suffix(".sampled.h5")
    sampled_store.unlink(missing_ok=True)
    with TreeMemorySampler() as sampler:
        index_images(job["folder"], sampled_store, encoder, batch_size=batch_size, progress=False)
    sampled_store.unlink()
    model_only = [baseline["model_only_images_per_s"] for baseline in baselines]
    for number, run in enumerate(runs):
        run["model_only_images_per_s"] = (model_only[number] + model_only[number + 1]) / 2
        run["ratio_e2e_vs_model"] = run["e2e_images_per_s"] / run["model_only_images_per_s"]
    median_run = sorted(runs, key=lambda run: run["ratio_e2e_vs_model"])[len(runs) // 2]
    figures = {**median_run, "rounds": runs, "model_only_images_per_s_all": model_only,
               "peak_rss_load_mb": load_peak_mb, "peak_rss_tree_mb": sampler.peak_mb}
    if job["naive"]:
        figures["naive_images_per_s"] = (baselines[0]["naive_images_per_s"]
                                         + baselines[-1]["naive_images_per_s"]) / 2
        figures["naive_images_per_s_before"] = baselines[0]["naive_images_per_s"]
        figures["naive_images_per_s_after"] = baselines[-1]["naive_images_per_s"]
    return figures


def timed_index_run(encoder, folder: str, store: Path, batch_size: int) -> dict[str, float]:
    """One `index_images` run into a new `store`: images/s end to end, and inside the model."""
    from clipwidgets.indexing import index_images

    store.unlink(missing_ok=True)
    model_seconds = 0.0
    encode_pixels = encoder.encode_pixels

    def timed_encode(pixels):
        nonlocal model_seconds
        start = time.perf_counter()
        embeddings = encode_pixels(pixels)
        model_seconds += time.perf_counter() - start
        return embeddings

    encoder.encode_pixels = timed_encode
    try:
        start = time.perf_counter()
        report = index_images(folder, store, encoder, batch_size=batch_size, progress=False)
        seconds = time.perf_counter() - start
    finally:
        del encoder.encode_pixels  # the class's method again
    return {"e2e_images_per_s": report.indexed / seconds, "e2e_report_images_per_s": report.images_per_second,
            "model_in_run_images_per_s": report.indexed / model_seconds,
            "model_share_of_run": model_seconds / seconds}


def baseline_rates(encoder, sample: list[Path], *, quick: bool, naive: bool,
                   batch_size: int) -> dict[str, float]:
    """Model-only images/s, and the naive loop's when `naive`."""
    rates = {"model_only_images_per_s": model_only_rate(encoder, sample, repeats=1 if quick else 2,
                                                        batch_size=batch_size)}
    if naive:
        rates["naive_images_per_s"] = naive_rate(encoder, sample)
    return rates


def agreement(fp32_store: Path, low_store: Path, encoder, low: str) -> dict[str, float]:
    """Mean cosine of the two stores' embeddings of the same images, and top-10 overlap of text searches;
    `low` names the lower precision (bf16 or fp16)."""
    from clipwidgets.store import EmbeddingStore

    with EmbeddingStore.open(fp32_store) as a, EmbeddingStore.open(low_store) as b:
        order = [b.index_of(path) for path in a.image_paths()]
        x = a.image_embeddings().astype(np.float32)
        y = b.image_embeddings().astype(np.float32)[order]
    cosines = np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    queries = encoder.encode_texts(list(QUERIES))
    k = min(10, len(x))
    top_x = np.argsort(-(queries @ x.T), axis=1)[:, :k]
    top_y = np.argsort(-(queries @ y.T), axis=1)[:, :k]
    overlap = np.mean([len(set(p) & set(q)) / k for p, q in zip(top_x, top_y, strict=True)])
    return {f"{low}_vs_fp32_mean_cosine": float(cosines.mean()),
            f"{low}_vs_fp32_min_cosine": float(cosines.min()),
            f"{low}_vs_fp32_top10_overlap": float(overlap), "agreement_queries": len(QUERIES)}


def run(quick: bool, *, images: int | None = None, device: str = "cpu",
        batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """Measure everything on `images` generated photos (quick: 48 with the tiny model; full: 800)."""
    count = images or (48 if quick else 800)
    folder = photo_folder(count)
    paths = sorted(folder.glob("*.jpg"))
    sample = paths[: min(count, 32 if quick else 160)]
    low = "bf16" if device == "cpu" else "fp16"
    figures: dict[str, Any] = {
        "model": "tiny (quick mode: the ratios are not the claims)" if quick
        else "ViT-B-32-quickgelu (random weights)",
        "device": device, "images": count, "image_size": "500x375", "batch_size": batch_size,
        "model_only_images": len(sample), "naive_images": len(sample)}
    precisions = ["fp32", low]
    if low == "bf16" and not cpu_supports_bf16():
        precisions.remove(low)
        figures["bf16_note"] = bf16_skip_note()
        print(figures["bf16_note"], flush=True)
    stores = {precision: CACHE_DIR / f"index_{count}_{device}_{precision}.h5" for precision in precisions}
    for precision, store in stores.items():
        result = measure_in_subprocess(folder, store, precision, quick=quick, sample=len(sample),
                                       naive=precision == "fp32", device=device, batch_size=batch_size)
        if "naive_images_per_s" in result:
            figures["naive_fp32_images_per_s"] = result["naive_images_per_s"]
        figures[f"model_only_{precision}_images_per_s"] = result["model_only_images_per_s"]
        figures[f"e2e_{precision}_images_per_s"] = result["e2e_images_per_s"]
        figures[f"e2e_{precision}_report_images_per_s"] = result["e2e_report_images_per_s"]
        figures[f"e2e_{precision}_peak_rss_mb"] = max(result["peak_rss_tree_mb"], result["peak_rss_load_mb"])
        figures[f"e2e_{precision}_peak_rss_model_load_mb"] = result["peak_rss_load_mb"]
        figures[f"e2e_{precision}_peak_rss_indexing_mb"] = result["peak_rss_tree_mb"]
        for when in ("before", "after"):
            if f"naive_images_per_s_{when}" in result:
                figures[f"naive_fp32_images_per_s_{when}"] = result[f"naive_images_per_s_{when}"]
        figures[f"ratio_e2e_vs_model_{precision}"] = result["ratio_e2e_vs_model"]
        figures[f"{precision}_model_in_run_images_per_s"] = result["model_in_run_images_per_s"]
        figures[f"{precision}_model_share_of_run"] = result["model_share_of_run"]
        figures[f"{precision}_model_only_images_per_s_all"] = result["model_only_images_per_s_all"]
        figures[f"{precision}_rounds"] = result["rounds"]
        figures[f"ratio_e2e_{precision}_vs_naive"] = (figures[f"e2e_{precision}_images_per_s"]
                                                      / figures["naive_fp32_images_per_s"])
    if low in stores:
        encoder = benchmark_encoder("fp32", quick=quick, device=device)
        figures.update(agreement(stores["fp32"], stores[low], encoder, low))
    print_figures(figures, [precision for precision in precisions if precision != "fp32"])
    return figures


def print_figures(figures: dict[str, Any], lows: list[str]) -> None:
    """The table of rates and ratios; `lows` is [] when the lower precision was skipped."""
    measured = ["fp32", *lows]
    rows = [[f"model only {p}", figures[f"model_only_{p}_images_per_s"], "", "", ""] for p in measured]
    rows.append(["naive loop fp32", figures["naive_fp32_images_per_s"], "", "", ""])
    for p in measured:
        rows.append([f"clipwidgets index_images {p}", figures[f"e2e_{p}_images_per_s"],
                     figures[f"ratio_e2e_vs_model_{p}"], figures[f"ratio_e2e_{p}_vs_naive"],
                     figures[f"e2e_{p}_peak_rss_mb"]])
    print_table(f"Indexing {figures['images']} generated 500x375 JPEGs ({figures['model']}, "
                f"{figures['device']}, batch {figures['batch_size']})", rows,
                ["path", "images/s", "x model only", "x naive fp32", "peak MiB (RSS + workers USS)"])
    for p in measured:
        rounds = figures[f"{p}_rounds"]
        print(f"{p}, {len(rounds)} round(s), median shown above: end to end / model only "
              + " ".join(f"{r['ratio_e2e_vs_model']:.3f}" for r in rounds) + "; model's share of the run "
              + " ".join(f"{r['model_share_of_run']:.3f}" for r in rounds) + "; model in the run "
              + " ".join(f"{r['model_in_run_images_per_s']:.1f}" for r in rounds) + " images/s")
    for low in lows:
        print(f"{low} vs fp32: mean cosine {figures[f'{low}_vs_fp32_mean_cosine']:.4f} "
              f"(min {figures[f'{low}_vs_fp32_min_cosine']:.4f}), top-10 overlap "
              f"{figures[f'{low}_vs_fp32_top10_overlap']:.2f} over {figures['agreement_queries']} "
              "text queries", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, help="number of generated photos (default 800; quick 48)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(to_jsonable(measure_job(json.loads(args.job)))), flush=True)
        return
    name = "indexing.json" if args.device == "cpu" else f"indexing_{args.device}.json"
    path = write_json(RESULTS_DIR / name, run(args.quick, images=args.images, device=args.device,
                                               batch_size=args.batch_size))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
