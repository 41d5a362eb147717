"""The standalone app in a real browser: `clipwidgets app` (Voila) driven by headless Chromium.

Runs in CI (CI=true), where .ci/run installs Debian's chromium; elsewhere it skips, saying why,
when no browser is installed. Set CLIPWIDGETS_SCREENSHOT=path to keep a screenshot of the page.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clipwidgets.synthetic import make_photos

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 120
PAGE_TIMEOUT_MS = 120_000
NUM_IMAGES = 30
PER_PAGE = 24
SECRET = "clipwidgets-secret-7f3a9c"


def require_browser() -> None:
    """Skip (outside CI) or fail (in CI) when Chromium or Playwright is missing."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is not installed (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright for Python is not installed (pip install playwright)"
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser test, but {problem}.")
    pytest.skip(f"no browser for the app test: {problem}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    """A store of generated photos, a secret text file beside it and a JPEG outside its image root."""
    from clipwidgets.indexing import index_images

    root = tmp_path_factory.mktemp("app")
    make_photos(root / "images", NUM_IMAGES, size=(320, 240))
    index_images(root / "images", root / "photos.h5", tiny_encoder, progress=False)
    (root / "secret.txt").write_text(SECRET)
    make_photos(root / "outside", 1, prefix="outside")
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
    port = free_port()
    server = start_server([sys.executable, "-m", "clipwidgets.cli", "app", "--store",
                           str(app_store / "photos.h5"), "--model", "tiny", "--port", str(port)],
                          app_store, "app")
    log = app_store / "app.log"
    try:
        wait_until(lambda: "clipwidgets app: open" in log.read_text(), server, log)
        yield f"http://127.0.0.1:{port}/", port, server
    finally:
        stop(server)


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


def fetch(port: int, path: str, *, hops: int = 3) -> tuple[int, bytes]:
    """GET `path` exactly as written (no normalisation), following redirects on the same server."""
    for _ in range(hops):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        location = response.getheader("Location")
        if response.status in (301, 302, 303, 307, 308) and location and location.startswith("/"):
            path = location
            continue
        return response.status, body
    return response.status, body


def card_names(page) -> list[str]:
    return page.locator(".clipwidgets-card .clipwidgets-name").all_inner_texts()


def search_and_wait(page, text: str) -> list[str]:
    """Type `text` in the panel's first text box, press Enter, wait for a page of loaded images."""
    query = page.locator(".clipwidgets-panel input[type=text]").first
    query.wait_for(timeout=PAGE_TIMEOUT_MS)
    query.fill(text)
    query.press("Enter")
    page.wait_for_function(
        "n => [...document.querySelectorAll('.clipwidgets-card img')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length === n",
        arg=PER_PAGE, timeout=60_000)
    assert page.locator(".clipwidgets-card img").count() == PER_PAGE
    return card_names(page)


def click_more_like_this(page, position: int) -> list[str]:
    """Click a card's "More like this" and wait until that image leads the grid."""
    name = card_names(page)[position]
    page.locator(".clipwidgets-card").nth(position).get_by_role("button", name="More like this").click()
    page.wait_for_function(
        "first => document.querySelector('.clipwidgets-card .clipwidgets-name')?.textContent === first",
        arg=name, timeout=60_000)
    page.get_by_text(f"(more like {name})").wait_for(timeout=30_000)
    return card_names(page)


def test_search_and_more_like_this_in_voila(app_url, browser_page, tmp_path):
    url, _, _ = app_url
    page = browser_page
    page.goto(url, timeout=PAGE_TIMEOUT_MS)
    before = search_and_wait(page, "a red ball on the grass")
    assert len(before) == PER_PAGE
    assert f"{NUM_IMAGES} results in" in page.locator(".clipwidgets-panel").inner_text()

    after = click_more_like_this(page, 2)
    assert after != before and after[0] == before[2]

    page.locator(".clipwidgets-card").first.get_by_role("button", name="open").click()
    page.locator(".clipwidgets-detail img").wait_for(timeout=30_000)
    assert str(Path("images") / after[0]) in page.locator(".clipwidgets-detail").inner_text()
    page.screenshot(path=str(tmp_path / "app.png"))
    if os.environ.get("CLIPWIDGETS_SCREENSHOT"):
        shutil.copy(tmp_path / "app.png", os.environ["CLIPWIDGETS_SCREENSHOT"])
    assert (tmp_path / "app.png").stat().st_size > 10_000
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
        before = search_and_wait(page, "a dog on the beach")
        after = click_more_like_this(page, 5)
        assert after != before and after[0] == before[5]
        page.screenshot(path=str(tmp_path / "lab.png"))
    finally:
        stop(server)


@pytest.mark.parametrize("path", [
    "/voila/files/../../../../../../etc/passwd",
    "/voila/files/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/voila/files/etc/passwd",
    "/voila/files/search_app.ipynb",
    "/voila/files/photo_00000.jpg",
    "/voila/static/../../../../../../etc/passwd",
    "/voila/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/voila/templates/lab/static/../../../../../../../etc/passwd",
    "/voila/labextensions/../../../../../../etc/passwd",
    "/voila/api/themes/../../../../../../etc/passwd",
    "/files/etc/passwd",
    "/etc/passwd",
    "/voila/render/etc/passwd",
    "/voila/tree/",
    "/api/contents/",
])
def test_no_route_serves_files(app_url, app_store, path):
    _, port, _ = app_url
    relative_to_root = os.path.relpath(app_store, "/")
    photo = (app_store / "outside" / "outside_00000.jpg").read_bytes()
    photo_sample = photo[len(photo) // 2: len(photo) // 2 + 64]  # entropy-coded: unique to this file
    for candidate in (path, path.replace("etc/passwd", f"{relative_to_root}/secret.txt"),
                      path.replace("etc/passwd", f"{relative_to_root}/outside/outside_00000.jpg")):
        status, body = fetch(port, candidate)
        assert b"root:x:0:0" not in body and SECRET.encode() not in body, (candidate, status)
        assert photo_sample not in body, (candidate, status)
        assert status != 200 or b"<html" in body.lower(), (candidate, status)


def test_the_app_listens_on_loopback_only(app_url):
    _, port, _ = app_url
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try")
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex((address, port)) != 0


def test_stopping_the_app_stops_voila_and_its_kernels(app_url):
    """SIGTERM to `clipwidgets app` (what a service manager or a test sends) leaves no process behind."""
    import psutil

    url, _, server = app_url
    with urllib.request.urlopen(url, timeout=PAGE_TIMEOUT_MS / 1000) as response:  # starts a kernel
        assert response.status == 200
    children = psutil.Process(server.pid).children(recursive=True)
    assert any("voila" in " ".join(child.cmdline()) for child in children)
    server.terminate()
    assert server.wait(timeout=60) == 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
