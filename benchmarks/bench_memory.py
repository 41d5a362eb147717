"""Memory of the search notebook's kernel: ViT-B/32, a Flickr8k-size store, a panel showing 24 results.

Each precision runs in a fresh Jupyter kernel (ipykernel, started with jupyter_client), cell by cell as
the search notebook does, and reports the kernel's RSS (and USS) after each step and its peak (VmHWM).
Target: under 1.5 GB, so the notebook runs within Binder's 2 GB limit. The model is ViT-B/32 with
random weights read from a safetensors file by `load_model`, the path the released weights take.
The store holds 8,091 random normalised image vectors and 40,455 captions, as Flickr8k does; its image
paths are hard links to a few generated photos, so the panel makes real thumbnails.
Quick mode: the `tiny` model and a 500-image store.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    VIT_B32,
    bf16_skip_note,
    cpu_supports_bf16,
    print_table,
    quick_main,
    random_vit_b32_checkpoint,
)
from clipwidgets.model import load_model

CACHE_DIR = RESULTS_DIR / "cache"
FLICKR8K_IMAGES = 8091
CAPTIONS_PER_IMAGE = 5
DISTINCT_PHOTOS = 64
QUERY = "a dog running on the grass"
KERNEL_TIMEOUT_S = 300

SUBJECTS = ("A black dog", "Two children", "A man in a red shirt", "A little girl", "A group of people",
            "A brown and white dog", "A woman", "A boy in swim trunks", "Two dogs", "A skier")
ACTIONS = ("is running through", "plays in", "is jumping over", "walks along", "is sitting on",
           "is standing in front of", "rides a bike past", "looks at")
PLACES = ("the grass", "the snow", "a fountain", "the beach", "a busy street", "a wooden fence",
          "the water", "a crowd of people", "a rocky hill")

# The search notebook, cell by cell; each cell ends by recording the kernel's memory.
CELLS = (
    ("kernel + imports", """
import json
import psutil
from IPython.display import display
from clipwidgets.searcher import Searcher
from clipwidgets.store import EmbeddingStore
from clipwidgets.widgets import SearchPanel
from clipwidgets.model import load_model
from benchmarks.common import peak_rss_mb

def _memory(step):
    memory = psutil.Process().memory_full_info()
    print(json.dumps({"step": step, "rss_mb": memory.rss / 2**20, "uss_mb": memory.uss / 2**20,
                      "peak_mb": peak_rss_mb()}))
"""),
    ("model loaded", "encoder = load_model($model, $pretrained, device='cpu', precision=$precision)"),
    ("store opened", "store = EmbeddingStore.open($store)"),
    ("searcher + one text query", "searcher = Searcher(store, encoder)\nsearcher.search($query, k=10)"),
    ("panel showing 24 results", "panel = SearchPanel(searcher, per_page=24)\npanel.search($query)\n"
                                 "display(panel)"),
    ("next page shown", "panel.next_page()"),
)


def image_folder(count: int) -> Path:
    """`count` unique image paths: hard links to a few generated 500x375 photos (made once, cached)."""
    from clipwidgets.synthetic import make_photos

    folder = CACHE_DIR / f"memory_images_{count}"
    if len(list(folder.glob("img_*.jpg"))) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    photos = make_photos(folder / "originals", DISTINCT_PHOTOS)
    for i in range(count):
        source, link = photos[i % len(photos)], folder / f"img_{i:05d}.jpg"
        try:
            os.link(source, link)
        except OSError:  # file systems without hard links
            shutil.copyfile(source, link)
    return folder


def caption(rng: np.random.Generator) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)} ."


def flickr8k_size_store(count: int, model_meta: dict[str, Any]) -> Path:
    """A store of `count` random normalised image vectors with 5 captions each, for `model_meta`."""
    from clipwidgets.store import EmbeddingStore

    folder = image_folder(count)
    path = CACHE_DIR / f"memory_store_{count}_{model_meta['name']}.h5"
    if path.exists():
        with EmbeddingStore.open(path) as store:
            same_model = all(store.model_meta.get(k) == model_meta[k] for k in ("name", "pretrained"))
            if same_model and store.num_images == count and store.num_texts == count * CAPTIONS_PER_IMAGE:
                return path
        path.unlink()
    rng = np.random.default_rng(0)
    dim = int(model_meta["embed_dim"])
    names = [f"img_{i:05d}.jpg" for i in range(count)]
    stats = [os.stat(folder / name) for name in names]
    images = _normalised(rng.standard_normal((count, dim), dtype=np.float32))
    texts = [caption(rng) for _ in range(count * CAPTIONS_PER_IMAGE)]
    text_vectors = _normalised(rng.standard_normal((len(texts), dim), dtype=np.float32))
    with EmbeddingStore.create(path, model_meta, folder) as store, store.batch():
        store.add_images([folder / name for name in names], images, sizes=[s.st_size for s in stats],
                         mtimes_ns=[s.st_mtime_ns for s in stats], widths=[500] * count,
                         heights=[375] * count)
        store.add_texts(texts, text_vectors, image_index=np.repeat(np.arange(count), CAPTIONS_PER_IMAGE),
                        sources=["caption"] * len(texts))
    return path


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def kernel_memory(store: Path, model: str, pretrained: str | None, precision: str) -> list[dict[str, Any]]:
    """Run CELLS in a fresh Jupyter kernel, loading `model` with `pretrained` weights; returns the
    memory recorded after each cell."""
    from jupyter_client import KernelManager

    manager = KernelManager(kernel_name="python3", transport="ipc")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    manager.start_kernel(cwd=str(Path(__file__).resolve().parent.parent), env=env)
    client = manager.client()
    client.start_channels()
    steps: list[dict[str, Any]] = []
    try:
        client.wait_for_ready(timeout=60)
        values = {name: repr(value) for name, value in
                  {"model": model, "pretrained": pretrained, "precision": precision, "store": str(store),
                   "query": QUERY}.items()}
        for step, code in CELLS:
            steps.append(_execute(client, Template(code).substitute(values) + f"\n_memory({step!r})"))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return steps


def _execute(client: Any, code: str) -> dict[str, Any]:
    """Execute one cell; returns the JSON line it printed, or raises with the cell's error."""
    printed: list[str] = []
    errors: list[str] = []

    def collect(message: dict[str, Any]) -> None:
        if message["msg_type"] == "stream" and message["content"]["name"] == "stdout":
            printed.append(message["content"]["text"])
        elif message["msg_type"] == "error":
            errors.append("\n".join(message["content"]["traceback"]))

    reply = client.execute_interactive(code, output_hook=collect, timeout=KERNEL_TIMEOUT_S)
    if reply["content"]["status"] != "ok" or errors:
        raise RuntimeError(f"kernel cell failed:\n{code}\n" + "\n".join(errors))
    lines = [line for line in "".join(printed).splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def run(quick: bool) -> dict[str, Any]:
    """Kernel RSS at fp32 and bf16 (bf16 only where native; quick: tiny model, 500 images)."""
    count = 500 if quick else FLICKR8K_IMAGES
    if quick:
        model, pretrained = "tiny", None
    else:  # a checkpoint file: the loading path of the released weights, transient copies included
        model, pretrained = VIT_B32, str(random_vit_b32_checkpoint())
    meta = load_model(model, pretrained, device="cpu", precision="fp32").meta
    store = flickr8k_size_store(count, meta)
    figures: dict[str, Any] = {
        "model": "tiny (quick mode)" if quick else f"{VIT_B32} (random weights from a checkpoint file)",
        "images": count, "captions": count * CAPTIONS_PER_IMAGE, "per_page": 24,
        "target_mb": 1.5e9 / 2**20}
    rows = []
    precisions = ["fp32", "bf16"]
    if not cpu_supports_bf16():
        precisions.remove("bf16")
        figures["bf16_note"] = bf16_skip_note()
        print(figures["bf16_note"], flush=True)
    for precision in precisions:
        steps = kernel_memory(store, model, pretrained, precision)
        figures[f"{precision}_steps"] = steps
        figures[f"{precision}_rss_mb"] = max(step["peak_mb"] for step in steps)
        figures[f"{precision}_rss_final_mb"] = steps[-1]["rss_mb"]
        figures[f"{precision}_uss_final_mb"] = steps[-1]["uss_mb"]
        rows += [[precision, step["step"], step["rss_mb"], step["uss_mb"], step["peak_mb"]] for step in steps]
    print_table(f"Search notebook kernel memory ({figures['model']}, {count} images, "
                f"{count * CAPTIONS_PER_IMAGE} captions)", rows,
                ["precision", "after", "RSS MiB", "USS MiB", "peak RSS MiB"])
    return figures


def main(argv: list[str] | None = None) -> None:
    quick_main("memory", run, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    main()
