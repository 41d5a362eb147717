"""What the browser tests share: Debian's Chromium driven by Playwright, and the rule that CI must
run them (elsewhere they skip, saying what is missing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


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
        pytest.fail(f"CI must run the browser tests, but {problem}.")
    pytest.skip(f"no browser: {problem}")


def card_names(page) -> list[str]:
    """The file names on the panel's cards, in order."""
    return page.locator(".clipwidgets-card .clipwidgets-name").all_inner_texts()


def search_and_wait(page, text: str, *, per_page: int, timeout_ms: int) -> list[str]:
    """Type `text` in the panel's first text box, press Enter, wait for `per_page` loaded images;
    returns the cards' file names."""
    query = page.locator(".clipwidgets-panel input[type=text]").first
    query.wait_for(timeout=timeout_ms)
    query.fill(text)
    query.press("Enter")
    page.wait_for_function(
        "n => [...document.querySelectorAll('.clipwidgets-card img')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length === n",
        arg=per_page, timeout=60_000)
    return card_names(page)
