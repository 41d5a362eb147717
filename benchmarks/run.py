"""Run the benchmarks, each in its own subprocess, and print one table of targets beside figures.

    python -m benchmarks.run [--quick] [--only NAME ...] [--out benchmarks/results]

Writes <out>/<name>.json per benchmark, <out>/summary.json and <out>/summary.md. Timings never make
this fail; a benchmark that raises (broken code) does, after the others have run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, fmt, format_table, machine_info, print_table, write_json

BENCHMARKS = ("model", "indexing", "search", "store", "scale", "panel", "memory", "feedback", "explore",
              "app", "distributed")
TIMEOUT_S = {True: 240, False: 3600}  # per benchmark, by quick


@dataclass(frozen=True)
class Target:
    """A claim from the issues: the benchmark's figure `key` compared with `value` (`at_least` or at most)."""

    benchmark: str
    label: str
    key: str
    value: float
    at_least: bool
    unit: str

    def measure(self, figures: dict[str, Any]) -> float | None:
        measured = figures.get(self.key)
        return None if measured is None else float(measured)


GB = 1e9 / 2**20  # MiB in a (decimal) gigabyte
TARGETS = (
    Target("indexing", "end to end / model only, fp32", "ratio_e2e_vs_model_fp32", 0.9, True, "x"),
    Target("indexing", "end to end / model only, bf16", "ratio_e2e_vs_model_bf16", 0.9, True, "x"),
    Target("indexing", "end to end bf16", "e2e_bf16_images_per_s", 35, True, "images/s"),
    Target("indexing", "end to end fp32 / naive fp32 loop", "ratio_e2e_fp32_vs_naive", 1.4, True, "x"),
    Target("indexing", "end to end bf16 / naive fp32 loop", "ratio_e2e_bf16_vs_naive", 2.5, True, "x"),
    Target("indexing", "peak RSS while indexing (target is for 10k images)",
           "e2e_fp32_peak_rss_mb", 2.5 * GB, False, "MiB"),
    Target("search", "1M x 512, one query top-10 / memory-bandwidth floor (best)",
           "n1000000_ratio_vs_floor", 1.3, False, "x"),
    Target("search", "1M x 512, one query: faiss IndexFlatIP / clipwidgets (best)",
           "n1000000_speedup_vs_faiss_flat", 3.0, True, "x"),
    Target("search", "10k x 512, one query top-10 (median)", "n10000_search_median_ms",
           1.0, False, "ms"),
    Target("search", "10k x 512, one query top-10 / numpy float32 (best)", "n10000_ratio_vs_numpy_fp32",
           1.0, False, "x"),
    Target("search", "100k x 512, one query top-10 / numpy float32 (best)", "n100000_ratio_vs_numpy_fp32",
           1.0, False, "x"),
    Target("search", "1M x 512, one query top-10 / numpy float32 (best)", "n1000000_ratio_vs_numpy_fp32",
           1.0, False, "x"),
    Target("search", "text query at 8,091 images, encode + search (median)", "text_query_median_ms",
           30, False, "ms"),
    Target("search", "emulated AVX2: 10k x 512 top-10 / numpy float32 (best)",
           "avx2_n10000_ratio_vs_numpy_fp32", 1.0, False, "x"),
    Target("search", "emulated AVX2: 100k x 512 top-10 / numpy float32 (best)",
           "avx2_n100000_ratio_vs_numpy_fp32", 1.0, False, "x"),
    Target("search", "emulated AVX2: 1M x 512 top-10 / numpy float32 (best)",
           "avx2_n1000000_ratio_vs_numpy_fp32", 1.0, False, "x"),
    Target("search", "emulated AVX2: 1M x 512 top-10 / memory-bandwidth floor (best)",
           "avx2_n1000000_ratio_vs_floor", 1.3, False, "x"),
    Target("store", "EmbeddingStore.open / np.load, 1M x 512 float16", "ratio_open_vs_npload",
           2.0, False, "x"),
    Target("scale", "commit of 32 rows into 10M x 512 (median)", "commit_32_median_ms", 50, False, "ms"),
    Target("scale", "commit of 32 rows, 10M / 10k (medians)", "commit_ratio_big_vs_10k", 2, False, "x"),
    Target("scale", "writer peak RSS appending to 10M rows", "writer_peak_rss_mb", 1 * GB, False, "MiB"),
    Target("scale", "open a 10M-row store in a fresh process", "open_s", 0.5, False, "s"),
    Target("scale", "RSS after open, 10M rows", "open_rss_mb", 0.3 * GB, False, "MiB"),
    Target("scale", "exact top-10 at 10M x 512, warm / read floor (best)", "exact_vs_floor", 1.3, False, "x"),
    Target("scale", "approximate index (ivfpq) at 10M: recall@10", "ann_recall_at_10", 0.95, True, ""),
    Target("scale", "approximate index (ivfpq) at 10M: ms per query (median)", "ann_ms_median", 10, False,
           "ms"),
    Target("scale", "SIGKILLs during commits, whole-commit prefix kept", "kills_commit_ok", 25, True,
           "kills"),
    Target("scale", "SIGKILLs during compaction, whole-commit prefix kept", "kills_compact_ok", 25, True,
           "kills"),
    Target("panel", "page of 24, warm thumbnails, ipykernel", "kernel_warm_ms", 100, False, "ms"),
    Target("memory", "search notebook kernel, peak RSS, fp32", "fp32_rss_mb", 1.5 * GB, False, "MiB"),
    Target("memory", "search notebook kernel, peak RSS, bf16", "bf16_rss_mb", 1.5 * GB, False, "MiB"),
    Target("feedback", "precision@24 gain after 2 rounds of 4+4 marks", "full_gain_points", 15, True,
           "points"),
    Target("explore", "map of 8,091 points: PCA + widget (Python side)", "map_8091_python_s", 2, False, "s"),
    Target("explore", "map of 8,091 points in the app: click to points drawn (Chromium, median)",
           "map_app_drawn_median_s", 2, False, "s"),
    Target("explore", "map: PCA of 1M x 512 (quick: scaled from 250k)", "map_pca_1m_extrapolated_s", 60,
           False, "s"),
    Target("explore", "near-duplicates, 8,091 images", "duplicates_8091_s", 3, False, "s"),
    Target("explore", "near-duplicates, 1M-image store (full mode only)", "duplicates_1m_s", 900, False, "s"),
    Target("explore", "near-duplicates, approximate stage: pair recall against exact", "recall_pairs", 0.99,
           True, "share"),
    Target("app", "total memory, 20 open sessions", "sessions_20_mb", 3 * GB, False, "MiB"),
    Target("app", "100 page loads that never connect, then 60 s idle", "after_100_page_loads_and_idle_mb",
           3 * GB, False, "MiB"),
    Target("app", "page load to a usable panel (warm browser, median)", "page_load_warm_median_s",
           1.5, False, "s"),
    Target("app", "query -> 24 results, p95, 20 sessions at 1 query/s", "query_p95_ms", 300, False, "ms"),
    Target("app", "store missing (8,091 images): model loaded -> first results",
           "first_minute_after_model_s", 30, False, "s"),
    Target("distributed", "Ray / local indexing throughput, one machine, fp32 (start-up apart)",
           "ratio_ray_vs_local", 0.75, True, "x"),
)


def run_child(name: str, quick: bool, out: Path) -> int:
    """Inside the subprocess: import bench_<name>, run it, write <out>/<name>.json."""
    module_name = f"benchmarks.bench_{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        write_json(out / f"{name}.json", {}, status="not available", reason=f"{module_name} does not exist")
        print(f"{name}: not available ({module_name} does not exist)")
        return 0
    if not hasattr(module, "run"):
        reason = f"{module_name} has no run(quick) function"
        write_json(out / f"{name}.json", {}, status="not available", reason=reason)
        print(f"{name}: not available ({reason})")
        return 0
    start = time.perf_counter()
    figures = module.run(quick)
    write_json(out / f"{name}.json", figures, status="ok", seconds=time.perf_counter() - start, quick=quick)
    return 0


def run_benchmark(name: str, quick: bool, out: Path) -> dict[str, Any]:
    """Run one benchmark in a fresh interpreter; returns its JSON document plus status and seconds."""
    command = [sys.executable, "-m", "benchmarks.run", "--child", name, "--out", str(out)]
    command += ["--quick"] if quick else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    path = out / f"{name}.json"
    path.unlink(missing_ok=True)
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    # A session of its own, so a timeout or Ctrl-C also stops what the benchmark started (kernels, indexers).
    with subprocess.Popen(command, env=env, start_new_session=True) as process:
        try:
            returncode: int | None = process.wait(timeout=TIMEOUT_S[quick])
        except BaseException as error:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if not isinstance(error, subprocess.TimeoutExpired):
                raise
            returncode = None
    if returncode is None:
        failure = f"timed out after {TIMEOUT_S[quick]} s"
    else:
        failure = None if returncode == 0 else f"exit status {returncode}"
    seconds = time.perf_counter() - start
    if failure is not None or not path.exists():
        document = {"status": "failed", "reason": failure or "no JSON written", "figures": {}}
        path.write_text(json.dumps(document, indent=2) + "\n")
    else:
        document = json.loads(path.read_text())
    document["wall_seconds"] = seconds
    return document


def target_rows(documents: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """[benchmark, claim, measured, target, measured/target, met] for each target whose benchmark ran."""
    rows = []
    for target in TARGETS:
        if target.benchmark not in documents:
            continue
        measured = target.measure(documents[target.benchmark].get("figures", {}))
        bound = (">= " if target.at_least else "<= ") + f"{fmt(float(target.value))} {target.unit}"
        if measured is None:
            rows.append([target.benchmark, target.label, "not measured", bound, None, "-"])
            continue
        met = measured >= target.value if target.at_least else measured <= target.value
        rows.append([target.benchmark, target.label, f"{fmt(measured)} {target.unit}", bound,
                     measured / target.value, "yes" if met else "no"])
    return rows


def status_rows(documents: dict[str, dict[str, Any]]) -> list[list[Any]]:
    return [[name, doc.get("status"), doc.get("wall_seconds"), doc.get("reason", "")]
            for name, doc in documents.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 5 minutes on 2 cores")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON results")
    parser.add_argument("--child", choices=BENCHMARKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        try:
            return run_child(args.child, args.quick, args.out)
        except Exception:
            traceback.print_exc()
            return 1

    command = "python -m benchmarks.run" + (" --quick" if args.quick else "") + \
        (f" --only {' '.join(args.only)}" if args.only else "")
    started = time.perf_counter()
    documents = {name: run_benchmark(name, args.quick, args.out) for name in args.only or BENCHMARKS}
    targets = target_rows(documents)
    statuses = status_rows(documents)
    target_headers = ["benchmark", "claim", "measured", "target", "measured/target", "met"]
    status_headers = ["benchmark", "status", "seconds", "note"]
    print_table("Benchmarks", statuses, status_headers)
    caveat = ("QUICK MODE: small sizes and the tiny model, so these figures do not test the claims"
              if args.quick else "informational: timings never fail the run")
    print_table(f"Targets ({caveat})", targets, target_headers)
    machine = machine_info()
    summary = {"command": command, "quick": args.quick, "seconds": time.perf_counter() - started,
               "benchmarks": {name: {key: doc.get(key) for key in ("status", "reason", "wall_seconds")}
                              for name, doc in documents.items()},
               "targets": [dict(zip(target_headers, row, strict=True)) for row in targets]}
    write_json(args.out / "summary.json", summary, machine=machine)
    (args.out / "summary.md").write_text(
        f"Command: `{command}`  \nMachine: {machine['cpu']}, {machine['cores_available']} cores, "
        f"{machine['ram_gb']} GB RAM, torch {machine['torch']}, {machine['date_utc']}  \n"
        f"Targets: {caveat}\n\n"
        f"{format_table(targets, target_headers)}\n\n{format_table(statuses, status_headers)}\n")
    print(f"\nwrote {args.out}/summary.json and summary.md")
    failed = [name for name, doc in documents.items() if doc.get("status") == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)} (see the traceback above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
