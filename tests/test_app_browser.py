"""The team app in a real browser: `clipwidgets app` driven by headless Chromium, five sessions at once.

Runs in CI (CI=true), where .ci/run installs Debian's chromium; elsewhere it skips, saying why,
when no browser is installed. Set CLIPWIDGETS_SCREENSHOT=path to keep a screenshot of the page.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apphelpers import AppProcess, free_port
from browser import CHROMIUM, CHROMIUM_ARGS, card_names, require_browser, search_and_wait

from clipwidgets.synthetic import make_photos

pytestmark = pytest.mark.browser

START_TIMEOUT_S = 120
PAGE_TIMEOUT_MS = 120_000
NUM_IMAGES = 30
PER_PAGE = 24


def non_loopback_address() -> str | None:
    """This machine's outward-facing IPv4 address, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module")
def app_store(tmp_path_factory, tiny_encoder):
    """A store of generated photos."""
    from clipwidgets.indexing import index_images

    root = tmp_path_factory.mktemp("app")
    make_photos(root / "images", NUM_IMAGES, size=(320, 240))
    index_images(root / "images", root / "photos.h5", tiny_encoder, workers=0, progress=False)
    return root


def start_server(command: list[str], folder: Path, name: str) -> subprocess.Popen:
    """Start a server whose output goes to `folder`/`name`.log."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_RUNTIME_DIR": str(folder / "runtime")}
    with (folder / f"{name}.log").open("w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env)


def wait_until(ready, server: subprocess.Popen, log: Path) -> None:
    """Wait (bounded) until `ready()`; fail with the server's log when it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.25)


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def app_url(app_store):
    """`clipwidgets app` on a free port of 127.0.0.1; stopped after the tests."""
    require_browser()
    server = AppProcess(app_store, "--store", str(app_store / "photos.h5")).wait_ready()
    try:
        yield server.url, server.port, server.process
    finally:
        server.stop()


@pytest.fixture
def browser_page():
    """A headless Chromium page, 1280x900."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def search_page(page, text: str) -> list[str]:
    """Search from the panel and wait for a full page of loaded images."""
    names = search_and_wait(page, text, per_page=PER_PAGE, timeout_ms=PAGE_TIMEOUT_MS)
    assert page.locator(".clipwidgets-card img").count() == PER_PAGE
    return names


def click_more_like_this(page, position: int) -> list[str]:
    """Click a card's "More like this" and wait until that image leads the grid."""
    name = card_names(page)[position]
    page.locator(".clipwidgets-card").nth(position).get_by_role("button", name="More like this").click()
    page.wait_for_function(
        "first => document.querySelector('.clipwidgets-card .clipwidgets-name')?.textContent === first",
        arg=name, timeout=60_000)
    page.get_by_text(f"(more like {name})").wait_for(timeout=30_000)
    return card_names(page)


QUERIES = ["a red ball on the grass", "a dog on the beach", "two children playing", "a city at night",
           "a bowl of fruit"]


def expected_names(store_path: Path, encoder, query: str) -> list[str]:
    """The first page of `query`'s results, computed here with the same model."""
    from clipwidgets.searcher import Searcher

    with Searcher(store_path, encoder) as searcher:
        return [Path(hit.path).name for hit in searcher.search(query, k=PER_PAGE)]


async def one_session(browser, url: str, query: str, position: int, shots: Path) -> tuple[list, list]:
    """A browser session of its own: type `query`, wait for its page of results, More like this."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    try:
        await page.goto(url, timeout=PAGE_TIMEOUT_MS)
        box = page.locator(".clipwidgets-panel input[type=text]").first
        await box.wait_for(timeout=PAGE_TIMEOUT_MS)
        await box.fill(query)
        await box.press("Enter")
        await page.wait_for_function(
            "n => [...document.querySelectorAll('.clipwidgets-card img')]"
            ".filter(img => img.complete && img.naturalWidth > 0).length === n", arg=PER_PAGE,
            timeout=PAGE_TIMEOUT_MS)
        await page.get_by_text(f"{NUM_IMAGES} results in").wait_for(timeout=PAGE_TIMEOUT_MS)
        before = await page.locator(".clipwidgets-card .clipwidgets-name").all_inner_texts()
        name = before[position]
        card = page.locator(".clipwidgets-card").nth(position)
        await card.get_by_role("button", name="More like this").click()
        await page.get_by_text(f"(more like {name})").wait_for(timeout=PAGE_TIMEOUT_MS)
        after = await page.locator(".clipwidgets-card .clipwidgets-name").all_inner_texts()
        await page.screenshot(path=str(shots / f"session{position}.png"))
        return before, after
    finally:
        await context.close()


def test_five_sessions_search_in_parallel(app_url, app_store, tiny_encoder, tmp_path):
    """Five browser sessions at once, each with its own query: each sees its own results, then
    "More like this" on a different card."""
    import asyncio

    from playwright.async_api import async_playwright

    url, _, _ = app_url

    async def run() -> list:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                return await asyncio.gather(*(one_session(browser, url, query, position, tmp_path)
                                              for position, query in enumerate(QUERIES)))
            finally:
                await browser.close()

    results = asyncio.run(run())
    for position, (query, (before, after)) in enumerate(zip(QUERIES, results, strict=True)):
        assert before == expected_names(app_store / "photos.h5", tiny_encoder, query), query
        assert after[0] == before[position] and after != before
    assert len({tuple(before) for before, _ in results}) > 1  # the queries did not all rank alike
    if os.environ.get("CLIPWIDGETS_SCREENSHOT"):
        shutil.copy(tmp_path / "session2.png", os.environ["CLIPWIDGETS_SCREENSHOT"])


def test_the_detail_view_opens_and_closes(app_url, browser_page):
    url, _, _ = app_url
    page = browser_page
    page.goto(url, timeout=PAGE_TIMEOUT_MS)
    search_page(page, "a red ball on the grass")
    first = card_names(page)[0]
    page.locator(".clipwidgets-card").first.get_by_role("button", name="open").click()
    page.locator(".clipwidgets-detail img").wait_for(timeout=30_000)
    assert str(Path("images") / first) in page.locator(".clipwidgets-detail").inner_text()
    page.get_by_role("button", name="close").click()
    page.locator(".clipwidgets-detail img").wait_for(state="hidden", timeout=30_000)


def test_the_panel_in_jupyterlab(app_store, browser_page, tmp_path):
    """The same panel inside a JupyterLab notebook: run the cell, search, More like this."""
    import nbformat

    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    notebook.cells = [nbformat.v4.new_code_cell(
        "from clipwidgets.model import load_model\nfrom clipwidgets.widgets import SearchPanel\n\n"
        "SearchPanel('photos.h5', load_model('tiny'))")]
    nbformat.write(notebook, app_store / "panel.ipynb")
    port = free_port()
    server = start_server([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
                           f"--port={port}", "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=clip",
                           f"--ServerApp.root_dir={app_store}", f"--LabApp.workspaces_dir={tmp_path}",
                           f"--LabApp.user_settings_dir={tmp_path}"], app_store, "lab")
    try:
        wait_until(lambda: listening(port), server, app_store / "lab.log")
        page = browser_page
        page.goto(f"http://127.0.0.1:{port}/lab/tree/panel.ipynb?token=clip", timeout=PAGE_TIMEOUT_MS)
        # Run the cell once the kernel is idle: a cell run while the kernel still starts can be lost.
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=PAGE_TIMEOUT_MS)
        page.locator(".jp-Notebook .jp-Cell .cm-content").first.click(timeout=PAGE_TIMEOUT_MS)
        page.keyboard.press("Shift+Enter")
        before = search_page(page, "a dog on the beach")
        after = click_more_like_this(page, 5)
        assert after != before and after[0] == before[5]
        page.screenshot(path=str(tmp_path / "lab.png"))
    finally:
        stop(server)


def test_the_app_listens_on_loopback_only(app_url):
    _, port, _ = app_url
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try")
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex((address, port)) != 0
