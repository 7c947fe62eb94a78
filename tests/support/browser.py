"""Driving the web page in a real headless Chromium (Debian's `chromium`, through Playwright; no
browser download): the launch, what a page logged and asked for, and signing in and out."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STREAM = "**/status/stream*"
TOKEN_KEY = "auditflow.token"


@contextmanager
def launched() -> Iterator[Any]:
    """Chromium, headless; the test fails (it is not skipped) when Chromium is missing."""
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def read_json(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


class Recorder:
    """Everything a page wrote to the console and every URL it asked for."""

    def __init__(self, page: Any) -> None:
        self.console: list[Any] = []
        self.page_errors: list[str] = []
        self.urls: list[str] = []
        page.on("console", lambda message: self.console.append(message))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("request", lambda request: self.urls.append(request.url))

    def unexpected_errors(self, *expected: tuple[str, str]) -> list[str]:
        """Console errors other than the deliberate ones: the cut status stream, the 401s of
        the sign-in probe (Chromium logs every failed fetch, and a first visit or a refused
        token is a 401 from /whoami), and `expected` (text, end of the URL) pairs."""
        allowed = [("net::ERR_FAILED", "/status/stream"), ("status of 401", "/whoami"), *expected]
        found = list(self.page_errors)
        for message in self.console:
            where = message.location.get("url", "")
            if message.type == "error" and not any(t in message.text and where.endswith(u) for t, u in allowed):
                found.append(f"{message.text} ({where})")
        return found

    def leaks(self, secret: str, content: str) -> list[str]:
        places = [f"page content: {content!r:.200}"] if secret in content else []
        places += [f"URL {url}" for url in self.urls if secret in url]
        places += [f"console: {m.text}" for m in self.console if secret in m.text]
        return places


def sign_in(page: Any, token: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#signin-form")).to_be_visible(timeout=10_000)
    page.fill("#token", token)
    page.click("#sign-in")


def sign_in_as(page: Any, token: str, name: str, role: str) -> None:
    from playwright.sync_api import expect

    sign_in(page, token)
    expect(page.locator("#who-name")).to_have_text(name, timeout=10_000)
    expect(page.locator("#who-roles")).to_contain_text(role)
    expect(page.locator("#signin-form")).to_be_hidden()
    assert page.evaluate("key => sessionStorage.getItem(key)", TOKEN_KEY) == token
    assert token not in page.evaluate("() => JSON.stringify(localStorage)")  # never kept beyond the tab


def sign_out(page: Any) -> None:
    from playwright.sync_api import expect

    page.click("#sign-out")
    expect(page.locator("#signin-form")).to_be_visible(timeout=10_000)
    expect(page.locator("#workflows")).to_be_hidden()
    assert page.evaluate("key => sessionStorage.getItem(key)", TOKEN_KEY) is None
