"""The team app under load: memory per session, page loads, query latency, first minute.

`clipwidgets app` runs as a real subprocess with ViT-B/32-size random weights (the tiny model in
--quick), driven by headless sessions (`clipwidgets.app.client.AppSession`, the page's widget
protocol over the websocket) and, when Chromium and Playwright are installed, by a real browser for
the page-load time. Phases:

1. first minute: the store is missing and 8,091 generated photos wait in a folder; from the moment
   the model is loaded (the app says it starts indexing) to the first search answered with results;
2. 20 sessions open, each showing a page of results: the server's total memory;
3. the 20 sessions each send a new text query once a second: query -> 24 results latency, p95;
4. page load to a usable panel in Chromium (a fresh browser profile, then warm loads);
5. 100 page loads that never connect, then 60 s idle: memory again.

--quick: the tiny model, 200 photos, 5 s of queries, 2 s idle (about 1.5 minutes, two app starts).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import RESULTS_DIR, VIT_B32, print_table, quick_main

SESSIONS = 20
FIRST_MINUTE_IMAGES = 8091
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when its parent dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class App:
    """`clipwidgets app ...` in its own process group, its output in `log`."""

    def __init__(self, folder: Path, args: list[str], name: str) -> None:
        with socket_port() as port:
            self.port = port
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = folder / f"{name}.log"
        command = [sys.executable, "-m", "clipwidgets.cli", "app", "--port", str(self.port), *args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.started = time.perf_counter()
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, preexec_fn=die_with_parent)

    def wait_for(self, text: str, timeout: float = 900) -> float:
        """Seconds since start when `text` appeared in the app's output."""
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app never printed {text!r}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        return time.perf_counter() - self.started

    def memory_mb(self) -> float:
        """Resident memory of the app and anything it started (children counted by private pages)."""
        root = psutil.Process(self.process.pid)
        total = root.memory_info().rss
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_full_info().uss
        return total / 2**20

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


class socket_port:
    """A free port of 127.0.0.1 (context manager yielding the number)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def model_args(quick: bool) -> list[str]:
    if quick:
        return ["--model", "tiny"]
    from benchmarks.common import random_vit_b32_checkpoint

    return ["--model", VIT_B32, "--pretrained", str(random_vit_b32_checkpoint())]


def photo_folder(count: int, *, unique: int = 200) -> Path:
    """`count` photo files, made once and kept in the benchmark cache: `unique` generated 320x240
    JPEGs, hard-linked under distinct names (the indexer decodes and embeds every file all the same)."""
    from clipwidgets.synthetic import make_photos

    folder = RESULTS_DIR / "cache" / f"app_photos_{count}"
    done = folder.with_name(folder.name + ".complete")
    if not done.exists():
        sources = make_photos(folder.with_name(folder.name + "_unique"), min(count, unique), size=(320, 240))
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            target = folder / f"photo_{number:05d}.jpg"
            if not target.exists():
                os.link(sources[number % len(sources)], target)
        done.touch()
    return folder


def first_minute(work: Path, quick: bool) -> tuple[dict[str, Any], Path]:
    """Missing store: seconds from the model loaded to the first results; returns figures and the store."""
    from clipwidgets.app.client import AppSession

    count = 200 if quick else FIRST_MINUTE_IMAGES
    images = photo_folder(count)
    store = work / "first.h5"
    app = App(work, ["--store", str(store), "--images", str(images), *model_args(quick)], "first")
    try:
        model_loaded = app.wait_for("in the background")
        ready = app.wait_for("clipwidgets app: open")
        with AppSession(app.url, timeout=120) as session:
            session.open()
            session.search("a photo")
            answered = time.perf_counter() - app.started
            results = len(session.card_names())
            progress = session.text_of("indexed") or ""
    finally:
        app.stop()
    return {"first_minute_images": count, "first_minute_model_loaded_s": model_loaded,
            "first_minute_page_served_s": ready, "first_minute_first_results_s": answered,
            "first_minute_after_model_s": answered - model_loaded, "first_minute_results": results,
            "first_minute_progress_line": progress}, store


def open_sessions(url: str, count: int) -> tuple[list[Any], list[float]]:
    from clipwidgets.app.client import AppSession

    sessions, opened = [], []
    for number in range(count):
        session = AppSession(url, timeout=120)
        opened.append(session.open())
        session.search(f"a photo of a scene, number {number}")
        sessions.append(session)
    return sessions, opened


def query_load(sessions: list[Any], seconds: float) -> list[float]:
    """Each session sends a new query once a second for `seconds`; returns the latencies in seconds."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter() + 0.5

    def drive(number: int, session: Any) -> None:
        tick = start + number / len(sessions)  # spread the sessions over the second
        query = 0
        while tick < start + seconds:
            time.sleep(max(0.0, tick - time.perf_counter()))
            elapsed = session.search(f"query {query} of session {number}: a dog on a beach at dusk")
            with lock:
                latencies.append(elapsed)
            query += 1
            tick += 1.0

    threads = [threading.Thread(target=drive, args=pair) for pair in enumerate(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def text_encode_ms(quick: bool) -> float:
    """The model alone: median ms to encode one new text query in this process, at the machine's
    current load (context for the query latency: every query of the load test encodes a new text)."""
    from benchmarks.common import benchmark_encoder

    encoder = benchmark_encoder("fp32", quick=quick)
    times = []
    for number in range(7):
        started = time.perf_counter()
        encoder.encode_texts([f"query {number}: a dog on a beach at dusk"])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times[1:])


def browser_page_loads(url: str, warm_loads: int) -> dict[str, float] | None:
    """Seconds from navigation to a usable panel (query box visible): a fresh profile, then warm."""
    if not CHROMIUM.exists():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            times = []
            for _ in range(1 + warm_loads):
                started = time.perf_counter()
                page.goto(url)
                page.locator(".clipwidgets-panel input[type=text]").first.wait_for(timeout=120_000)
                times.append(time.perf_counter() - started)
            context.close()
        finally:
            browser.close()
    return {"page_load_cold_s": times[0], "page_load_warm_median_s": statistics.median(times[1:]),
            "page_load_warm_max_s": max(times[1:])}


def run(quick: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {"model": "tiny" if quick else f"{VIT_B32} (random weights)",
                               "sessions": SESSIONS, "load_average_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        first, store = first_minute(work, quick)
        figures.update(first)
        app = App(work, ["--store", str(store), *model_args(quick), "--max-sessions", "40"], "load")
        try:
            app.wait_for("clipwidgets app: open")
            figures["idle_server_mb"] = app.memory_mb()
            sessions, opened = open_sessions(app.url, SESSIONS)
            figures["sessions_20_mb"] = app.memory_mb()
            figures["session_open_median_s"] = statistics.median(opened)
            figures["text_encode_alone_median_ms"] = text_encode_ms(quick)
            latencies = sorted(query_load(sessions, 5 if quick else 60))
            figures["queries"] = len(latencies)
            figures["query_median_ms"] = 1000 * statistics.median(latencies)
            figures["query_p95_ms"] = 1000 * latencies[int(0.95 * (len(latencies) - 1))]
            figures["query_max_ms"] = 1000 * latencies[-1]
            figures["sessions_20_after_queries_mb"] = app.memory_mb()
            loads = browser_page_loads(app.url, 2 if quick else 10)
            if loads is not None:
                figures.update(loads)
            for session in sessions:
                session.close()
            for _ in range(100):
                with urllib.request.urlopen(app.url, timeout=60) as response:
                    response.read()
            figures["after_100_page_loads_mb"] = app.memory_mb()
            time.sleep(2 if quick else 60)
            figures["after_100_page_loads_and_idle_mb"] = app.memory_mb()
        finally:
            app.stop()
    figures["load_average_end"] = os.getloadavg()[0]
    rows = [[key, value] for key, value in figures.items() if not isinstance(value, str)]
    print_table("clipwidgets app under load", rows, ["figure", "value"])
    return figures


def main(argv: list[str] | None = None) -> None:
    quick_main("app", run, __doc__, argv)


if __name__ == "__main__":
    main()
