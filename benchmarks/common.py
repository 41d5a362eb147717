"""Shared helpers for the benchmarks: machine description, timing, memory, JSON and tables."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
VIT_B32 = "ViT-B-32-quickgelu"


def machine_info() -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, RAM, accelerator, library versions, bf16 support."""
    import numpy as np
    import open_clip
    import PIL
    import psutil
    import torch

    info: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "open_clip": open_clip.__version__,
        "pillow": PIL.__version__,
        "cpu_bf16": cpu_supports_bf16(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for name in ("h5py", "faiss", "clipwidgets"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "installed")
        except ImportError:
            info[name] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_supports_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16, AMX or ARM BF16).

    oneDNN's own check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) is not used: it is also true
    on AVX512 CPUs without bf16 instructions, where bf16 runs emulated, several times slower.
    """
    from clipwidgets.cpu import native_bf16

    return native_bf16()


def bf16_skip_note() -> str:
    """Why the bf16 figures are missing on this CPU (printed and recorded by the benchmarks)."""
    from clipwidgets.cpu import missing_bf16_feature

    return (f"bf16 skipped: this CPU lacks {missing_bf16_feature()}, so torch would emulate bfloat16 "
            "(about 7x slower than fp32)")


@contextlib.contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Silence open_clip's warning that no pretrained weights were loaded: random weights are on purpose."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def random_vit_b32(precision: str = "fp32", *, device: str = "cpu", seed: int = 0):
    """An `Encoder` around ViT-B/32 (QuickGELU) with random weights: the released model's compute,
    nothing downloaded. Embeddings are meaningless; speed and memory are the real model's."""
    import open_clip
    import torch

    from clipwidgets.model import _DTYPES, Encoder
    from clipwidgets.open_clip_compat import embed_dim, preprocess_meta

    with quiet_open_clip(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(VIT_B32, pretrained=None, device=device)
    model = model.to(dtype=_DTYPES[precision])
    meta = {
        "name": VIT_B32,
        "pretrained": f"random-seed-{seed}",
        "embed_dim": embed_dim(model),
        "preprocess": preprocess_meta(model),
        "open_clip_version": open_clip.__version__,
    }
    return Encoder(model, preprocess, open_clip.get_tokenizer(VIT_B32),
                   device=device, precision=precision, meta=meta)


def random_vit_b32_checkpoint(folder: str | Path = RESULTS_DIR / "cache") -> Path:
    """A safetensors file of random ViT-B/32 weights (written once), so `load_model(VIT_B32, path)` runs
    the loading path of the released weights (open_clip fetches them as safetensors), memory included."""
    from safetensors.torch import save_file

    path = Path(folder) / "vit-b-32-quickgelu-random.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        weights = random_vit_b32("fp32").model.state_dict()
        state = {name: tensor.contiguous() for name, tensor in weights.items()}
        save_file(state, partial)
        partial.rename(path)
    return path


def benchmark_encoder(precision: str, *, quick: bool, device: str = "cpu"):
    """The encoder a benchmark measures: random ViT-B/32, or the offline `tiny` model in quick mode."""
    if quick:
        from clipwidgets.model import load_model

        return load_model("tiny", device=device, precision=precision)
    return random_vit_b32(precision, device=device)


def timeit(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds per call of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux this is VmHWM, which starts afresh at exec; `ru_maxrss` is not used there because a
    process started by fork+exec inherits its parent's peak in it.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class TreeMemorySampler:
    """Samples the memory of a process and its descendants; `peak_mb` after the block.

    The figure is the root's RSS plus each descendant's USS (its private pages): a child that was just
    forked shares its parent's pages until it execs, and counting its RSS would count them twice.
    """

    def __init__(self, pid: int | None = None, *, interval_s: float = 0.05) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, daemon=True)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            total = root.memory_info().rss
            children = root.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        for child in children:
            try:
                total += child.memory_full_info().uss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak_mb = max(self.peak_mb, total / 2**20)


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and paths inside `value` into plain JSON types."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalar or array
        return value.tolist()
    return value


def write_json(path: str | Path, figures: dict[str, Any], *, machine: dict[str, Any] | None = None,
               **fields: Any) -> Path:
    """Write `{"machine": ..., **fields, "figures": ...}` as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = machine if machine is not None else machine_info()
    document = {"machine": machine, **fields, "figures": figures}
    path.write_text(json.dumps(to_jsonable(document), indent=2) + "\n")
    return path


def quick_main(name: str, run: Any, description: str, argv: list[str] | None = None) -> None:
    """The command line of a benchmark whose only option is --quick: run it, write <name>.json."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(f"wrote {write_json(RESULTS_DIR / f'{name}.json', run(args.quick))}")


def fmt(value: Any) -> str:
    """A figure as a short string: 3 significant digits for floats."""
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.2e}"
    return "-" if value is None else str(value)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table (also valid Markdown) of `rows` under `headers`."""
    cells = [[fmt(cell) for cell in row] for row in rows]
    widths = [max(len(str(header)), *(len(row[i]) for row in cells)) if cells else len(str(header))
              for i, header in enumerate(headers)]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def print_table(title: str, rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print `title` and a table of `rows`."""
    print(f"\n{title}\n{format_table(rows, headers)}", flush=True)
