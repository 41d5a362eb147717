"""Model only: ViT-B/32 (random weights, same compute) images/s at fp32 and bf16 (and fp16 on CUDA).

Input is an already preprocessed batch, so this is the ceiling the indexing pipeline is compared with.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import (
    bf16_skip_note,
    cpu_supports_bf16,
    print_table,
    quick_main,
    random_vit_b32,
    timeit,
)


def images_per_second(encoder, *, batch_size: int, repeats: int) -> float:
    """Images/s of `encoder.encode_pixels` on one random preprocessed batch, after one warm-up call."""
    import torch

    height, width = encoder.meta["preprocess"]["image_size"]
    pixels = torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(0))
    seconds = timeit(lambda: encoder.encode_pixels(pixels), repeats=repeats, warmup=1)
    return batch_size / seconds


def precisions() -> list[tuple[str, str]]:
    """(device, precision) pairs to measure here: fp32 and bf16 on CPU (bf16 only where it is native),
    plus fp32, bf16 and fp16 on CUDA."""
    import torch

    pairs = [("cpu", "fp32")] + ([("cpu", "bf16")] if cpu_supports_bf16() else [])
    if torch.cuda.is_available():
        pairs += [("cuda", "fp32"), ("cuda", "bf16"), ("cuda", "fp16")]
    return pairs


def run(quick: bool) -> dict[str, Any]:
    """Measure images/s per (device, precision); quick: batch 8, 2 repeats instead of batch 32, 3."""
    batch_size, repeats = (8, 2) if quick else (32, 3)
    figures: dict[str, Any] = {"model": "ViT-B-32-quickgelu (random weights)", "batch_size": batch_size}
    rows = []
    if not cpu_supports_bf16():
        figures["bf16_note"] = bf16_skip_note()
        print(figures["bf16_note"], flush=True)
    for device, precision in precisions():
        encoder = random_vit_b32(precision, device=device)
        if device == "cuda":
            repeats_here = repeats * 5
            batch = batch_size * 8
        else:
            repeats_here, batch = repeats, batch_size
        rate = images_per_second(encoder, batch_size=batch, repeats=repeats_here)
        key = precision if device == "cpu" else f"{device}_{precision}"
        figures[f"{key}_images_per_s"] = rate
        rows.append([device, precision, batch, rate])
        del encoder
    if "bf16_images_per_s" in figures:
        figures["bf16_vs_fp32_speedup"] = figures["bf16_images_per_s"] / figures["fp32_images_per_s"]
    print_table("Model only (encode_pixels on a preprocessed batch)", rows,
                ["device", "precision", "batch", "images/s"])
    return figures


def main(argv: list[str] | None = None) -> None:
    quick_main("model", run, __doc__, argv)


if __name__ == "__main__":
    main()
