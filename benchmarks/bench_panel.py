"""SearchPanel: kernel time to show a page of 24 results, with warm, disk-cached and cold thumbnails.

Measured twice: in this process (widgets without a front-end) and inside a real ipykernel, where
every widget change is serialised and published as a comm message, as in a notebook. The store holds
generated 500x375 JPEGs (the size of Flickr8k photos) indexed with the offline `tiny` model, so the
search itself is cheap and the figures are dominated by thumbnails and widget updates; a ViT-B/32 text
query adds about 25 ms (see the search benchmark).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import print_table, quick_main

PER_PAGE = 24
QUERIES = ("a dog running on the beach", "a red car in the street", "children playing in the snow")


def build_store(folder: Path, count: int) -> Path:
    """Index `count` generated photos into `folder`/photos.h5 with the tiny model."""
    from clipwidgets.indexing import index_images
    from clipwidgets.model import load_model
    from clipwidgets.synthetic import make_photos

    make_photos(folder / "images", count)
    index_images(folder / "images", folder / "photos.h5", load_model("tiny", device="cpu"),
                 workers=0, progress=False)
    return folder / "photos.h5"


def measure(store_path: str, repeats: int) -> dict[str, float]:
    """Median milliseconds to switch pages for each thumbnail state, plus a page's thumbnail kilobytes.

    Each repeat searches a new query with an empty cache (cold: pages 1 and 2 are decoded), empties
    the memory cache (disk: pages 1 and 2 come from the disk cache) and switches pages once more
    (warm: from memory). Every timed step changes all 24 cards.
    """
    from clipwidgets.model import load_model
    from clipwidgets.thumbnails import ThumbnailCache
    from clipwidgets.widgets import SearchPanel

    encoder = load_model("tiny", device="cpu")
    with tempfile.TemporaryDirectory() as disk:
        panel = SearchPanel(store_path, encoder, per_page=PER_PAGE, disk_cache=False)
        store = panel.searcher.store
        panel.search("warm-up query")  # first-call costs of torch and widgets are not the panel's
        times: dict[str, list[float]] = {"cold": [], "disk": [], "warm": [], "search": []}
        for repeat in range(repeats):
            query = QUERIES[repeat % len(QUERIES)]
            panel.thumbnails = ThumbnailCache(store, disk_dir=Path(disk) / str(repeat))
            times["cold"] += [_timed(panel.search, query), _timed(panel.next_page)]
            panel.thumbnails.clear()
            times["disk"] += [_timed(panel.previous_page), _timed(panel.next_page)]
            times["warm"] += [_timed(panel.previous_page), _timed(panel.next_page)]
            times["search"].append(panel.searcher.search(query, k=PER_PAGE, offset=PER_PAGE).elapsed_ms)
        page_bytes = sum(len(panel.thumbnails.get(hit.index)) for hit in panel.results)
    figures = {f"{state}_ms": statistics.median(values) for state, values in times.items()}
    figures["warm_render_only_ms"] = figures["warm_ms"] - figures["search_ms"]
    figures["page_thumbnails_kb"] = page_bytes / 1024
    return figures


def _timed(action: Any, *args: Any) -> float:
    start = time.perf_counter()
    action(*args)
    return (time.perf_counter() - start) * 1000


def measure_in_kernel(store_path: Path, repeats: int, timeout: float = 180.0) -> dict[str, float]:
    """`measure()` run inside a fresh ipykernel (real comm messages), returned as a dict."""
    from jupyter_client.manager import start_new_kernel

    code = ("import json\nfrom benchmarks.bench_panel import measure\n"
            f"print('FIGURES' + json.dumps(measure({str(store_path)!r}, {repeats})))")
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(Path(__file__).parent.parent))
    printed: list[str] = []

    def collect(message: dict) -> None:
        if message["msg_type"] == "stream":
            printed.append(message["content"]["text"])
        elif message["msg_type"] == "error":
            printed.append("\n".join(message["content"]["traceback"]))

    try:
        client.execute_interactive(code, output_hook=collect, timeout=timeout)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    output = "".join(printed)
    if "FIGURES" not in output:
        raise RuntimeError(f"the kernel did not report figures:\n{output}")
    return json.loads(output.split("FIGURES", 1)[1].strip().splitlines()[0])


def run(quick: bool) -> dict[str, Any]:
    """Quick: 48 photos, 3 repeats; full: 240 photos, 9 repeats (each repeat a different query)."""
    count, repeats = (48, 3) if quick else (240, 9)
    with tempfile.TemporaryDirectory() as folder:
        store_path = build_store(Path(folder), count)
        in_process = measure(str(store_path), repeats)
        in_kernel = measure_in_kernel(store_path, repeats)
    figures: dict[str, Any] = {"images": count, "per_page": PER_PAGE, "repeats": repeats,
                               "model": "tiny", "thumbnail_side_px": 160}
    figures.update({f"kernel_{key}": value for key, value in in_kernel.items()})
    figures.update({f"process_{key}": value for key, value in in_process.items()})
    rows = [[state, in_kernel[f"{state}_ms"], in_process[f"{state}_ms"]]
            for state in ("warm", "disk", "cold", "search")]
    rows.append(["warm, render only", in_kernel["warm_render_only_ms"], in_process["warm_render_only_ms"]])
    print_table(f"SearchPanel: ms to show a page of {PER_PAGE} results (median of {repeats}); "
                f"page thumbnails {in_kernel['page_thumbnails_kb']:.0f} KB", rows,
                ["thumbnails", "ipykernel ms", "in process ms"])
    return figures


def main(argv: list[str] | None = None) -> None:
    quick_main("panel", run, __doc__, argv)


if __name__ == "__main__":
    main()
