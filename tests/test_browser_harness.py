"""The browser harness itself: it must see what the page tests rely on it to see.

A report or serve-page test that asserts "no console errors, no network requests" is only worth
something if the harness records both; these pages break each rule on purpose.
"""

from __future__ import annotations

import socket
from pathlib import Path


def _closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_clean_offline_page_has_no_errors_or_requests(browser, tmp_path: Path) -> None:
    html = tmp_path / "clean.html"
    html.write_text(
        "<!doctype html><html><body><h1 id='t'>ok</h1>"
        "<img alt='dot' src='data:image/gif;base64,R0lGODlhAQABAAAAACw='>"
        "<script>document.getElementById('t').textContent = 'ran';</script></body></html>"
    )
    page = browser.open(html.as_uri())
    assert page.page.inner_text("#t") == "ran"
    assert page.errors == []
    assert page.external_requests() == []
    shot = page.screenshot(tmp_path / "clean.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.close()


def test_console_errors_and_network_requests_are_recorded(browser, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_loopback_port()}/style.css"
    html = tmp_path / "leaky.html"
    html.write_text(
        f"<!doctype html><html><head><link rel='stylesheet' href='{url}'></head><body>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    page = browser.open(html.as_uri())
    assert "boom" in page.errors
    assert any("undefinedFunction" in e for e in page.errors)
    assert page.external_requests() == [url]
    page.close()
