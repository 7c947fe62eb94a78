"""The status page in a real headless Chromium (Debian's `chromium`, driven by Playwright; no
browser download) against a running gateway and processor: submit the sample plan, Approve,
see the processing view within a second, then the findings. Screenshots go to the test's
tmp_path (`pytest --basetemp DIR` keeps them somewhere known)."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Pair

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def test_submit_approve_watch_and_see_the_findings(pair: Pair, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url = f"http://127.0.0.1:{pair.gateway.rest_port}/"
    wait_http(url)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    page.goto(url)

    # The sample plan is pre-filled; submit it as carol.
    stream = "**/status/stream"
    page.route(stream, lambda route: route.abort())
    expect(page.locator("#plan-json")).to_have_value(re.compile("ledger_summary"), timeout=10_000)
    page.fill("#requester", "carol")
    page.click("#submit-plan")
    expect(page.locator("#awaiting-view")).to_be_visible(timeout=10_000)
    expect(page.locator("#detail-status")).to_have_text("AWAITING_APPROVAL")
    workflow_id = page.locator("#detail-id").inner_text()
    assert workflow_id.startswith("wf_")
    expect(page.locator(f'#workflow-table tr[data-workflow-id="{workflow_id}"]')).to_be_visible()
    page.screenshot(path=str(tmp_path / "1-submitted.png"), full_page=True)

    # Approve as alice: the processing view comes with the approve answer, within a second (the
    # status stream is cut until then, so no stream event can be what switched the view).
    page.fill("#reviewer", "alice")
    clicked = time.monotonic()
    page.click("#approve")
    expect(page.locator("#processing-view")).to_be_visible(timeout=1_000)
    assert time.monotonic() - clicked < 1.0
    expect(page.locator("#awaiting-view")).to_be_hidden()
    assert page.locator("#event-log li").count() == 0
    page.screenshot(path=str(tmp_path / "2-processing.png"), full_page=True)
    page.unroute(stream)  # EventSource reconnects by itself

    # The stream drives the progress bar and the event log to the end; then the findings.
    expect(page.locator("#done-view")).to_be_visible(timeout=60_000)
    expect(page.locator("#detail-status")).to_have_text("COMPLETED")
    assert page.locator("#findings tbody tr").count() > 0
    severities = set(page.locator("#findings tbody tr td:nth-child(2)").all_inner_texts())
    assert severities <= {"high", "medium", "low"} and severities
    log = page.locator("#event-log li").all_inner_texts()
    assert any("APPROVED" in line for line in log) and any("COMPLETED" in line for line in log), log
    progress = page.locator("#progress")
    assert progress.get_attribute("value") == progress.get_attribute("max")
    page.screenshot(path=str(tmp_path / "3-findings.png"), full_page=True)
    assert (tmp_path / "3-findings.png").stat().st_size > 0
    assert not [e for e in console_errors if "net::ERR_FAILED" not in e], console_errors  # but the cut stream
