"""A real browser for the tests of pages mnistkit writes or serves (report HTML, the serve page).

Debian's ``chromium`` (``.ci/run`` installs it with apt) driven headless through Playwright's Python
package, launched with ``executable_path``: Playwright's own browser download is never used (nothing
can be downloaded here). ``Page`` records what a user's browser would show a developer: console
messages of type error, uncaught page errors, and every request the page makes, so a test can
require "no console errors" and "no network requests" of a page that must work offline.

Use the ``browser`` fixture (session-scoped: one chromium process for the suite)::

    def test_page(browser, tmp_path):
        page = browser.open("file:///.../report.html")
        assert page.errors == []
        assert page.external_requests() == []
        page.screenshot(tmp_path / "report.png")
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

# Where Debian puts it; CHROMIUM overrides (another distribution's path, a developer's own build).
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    override = os.environ.get("CHROMIUM")
    if override:
        return override if Path(override).exists() else None
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Page:
    """One open tab with what it logged and requested since it was opened."""

    page: Any  # playwright.sync_api.Page
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def external_requests(self, allowed_origin: str | None = None) -> list[str]:
        """Requests that left the page's own file or data/blob URIs (or ``allowed_origin``)."""
        out = []
        for url in self.requests:
            parsed = urlparse(url)
            if parsed.scheme in ("data", "blob", "file", "about"):
                continue
            if allowed_origin and url.startswith(allowed_origin):
                continue
            out.append(url)
        return out

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self) -> None:
        self.page.close()


class Browser:
    def __init__(self, browser: Any) -> None:
        self._browser = browser

    def open(self, url: str, width: int = 1280, height: int = 800, wait: str = "load") -> Page:
        """Open ``url`` in a fresh context (no shared cookies or cache between tests)."""
        context = self._browser.new_context(viewport={"width": width, "height": height})
        tab = context.new_page()
        page = Page(tab)
        tab.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: page.errors.append(f"uncaught: {e}"))
        tab.on("request", lambda r: page.requests.append(r.url))
        tab.goto(url, wait_until=wait)
        return page


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    # .ci/run installs chromium and sets MNISTKIT_REQUIRE_BROWSER: there a missing browser fails the
    # browser tests instead of skipping them silently.
    missing = pytest.fail if os.environ.get("MNISTKIT_REQUIRE_BROWSER") else pytest.skip
    if executable is None:
        missing("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        from playwright import sync_api
    except ImportError:
        missing("playwright is not installed (it is in the [dev] extra: make setup)")
    with sync_api.sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        launched = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield Browser(launched)
        finally:
            launched.close()
