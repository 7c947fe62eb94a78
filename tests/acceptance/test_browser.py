"""The web page in a real headless Chromium (Debian's `chromium`, driven by Playwright; no
browser download).

Against a running gateway and processor: a refused token keeps the page signed out; carol (a
submitter) signs in with a pasted JWT and submits the sample plan from her own list; a viewer
sees it but may not approve or submit; alice (an approver) finds it in her work queue, opens it,
approves after the confirmation, sees the processing view within a second, then the findings.
No token ever reaches the page's text, a URL or the console.

Against a stand-in backend (`page.route`): the page's own Server-Sent Events reader sends the
token, honours `retry:`, resumes with Last-Event-ID after a dropped connection and stops at
`event: end`; an identity from a trusted proxy, a 403 and a session that stops working.

Screenshots go to the test's tmp_path (`pytest --basetemp DIR` keeps them somewhere known)."""

from __future__ import annotations

import csv
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import auth
from tests.support.browser import STREAM, TOKEN_KEY, Recorder, read_json, sign_in, sign_in_as, sign_out, wait_http
from tests.support.cluster import Pair

STATIC = Path(__file__).resolve().parents[2] / "gateway" / "rest" / "static"


def refusal_message(url: str, token: str) -> str:
    """What the gateway says to `token` (the page must show the same)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    body = json.loads(refused.value.read())
    assert body["status"] == "UNAUTHENTICATED"
    return str(body["message"])


def test_sign_in_submit_approve_watch_and_see_the_findings(pair: Pair, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    base = f"http://127.0.0.1:{pair.gateway.rest_port}"
    wait_http(base + "/")
    carol = auth.jwt_for("carol", ("submitter",))
    vera = auth.jwt_for("vera", ("viewer",))
    alice = auth.jwt_for("alice", ("approver",))
    bad = "aft_" + "not-a-token-the-gateway-knows-0123456789"
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    seen = Recorder(page)
    page.route(STREAM, lambda route: route.abort())  # cut until after the Approve click, below
    page.goto(base + "/")

    # Signed out: only the sign-in form. A refused token shows the server's 401 message and is
    # not kept.
    expect(page.locator("#signin-form")).to_be_visible(timeout=10_000)
    for section in ("#submit", "#workflows", "#detail", "#signed-in"):
        expect(page.locator(section)).to_be_hidden()
    sign_in(page, bad)
    expect(page.locator("#signin-error")).to_contain_text(refusal_message(base + "/whoami", bad), timeout=10_000)
    expect(page.locator("#signin-error")).to_have_attribute("role", "alert")
    expect(page.locator("#signed-in")).to_be_hidden()
    assert page.evaluate("() => sessionStorage.length") == 0
    page.screenshot(path=str(tmp_path / "0-signed-out.png"), full_page=True)

    # carol, a submitter, submits the sample plan; she may cancel it but not approve it.
    sign_in_as(page, carol, "carol", "submitter")
    expect(page.locator("#who-via")).to_contain_text("JWT")
    expect(page).to_have_url(re.compile(r"/ui/queue\?view=mine$"))  # a submitter starts with their own plans
    page.click("#submit summary")
    expect(page.locator("#plan-json")).to_have_value(re.compile("ledger_summary"), timeout=10_000)
    page.click("#submit-plan")
    expect(page.locator("#awaiting-view")).to_be_visible(timeout=10_000)
    expect(page.locator("#detail-status")).to_have_text("AWAITING_APPROVAL")
    expect(page.locator("#detail-people")).to_contain_text("Submitted by carol on ")
    expect(page.locator("#decision-controls")).to_be_hidden()
    expect(page.locator("#cancel-awaiting")).to_be_visible()
    workflow_id = page.locator("#detail-id").inner_text()
    assert workflow_id.startswith("wf_")
    expect(page).to_have_url(re.compile(f"/ui/workflows/{workflow_id}$"))
    page.click("#back")
    row = page.locator(f'#workflow-table tr[data-workflow-id="{workflow_id}"]')
    expect(row).to_be_visible(timeout=10_000)
    expect(row.locator("td").nth(2)).to_have_text("carol")
    page.screenshot(path=str(tmp_path / "1-submitted.png"), full_page=True)
    sign_out(page)
    expect(page.locator("#account-status")).to_have_text("Signed out.")

    # vera, a viewer, sees the workflow but no enabled control to submit, approve or reject.
    sign_in_as(page, vera, "vera", "viewer")
    page.click("a[data-view=all]")
    expect(row).to_be_visible(timeout=10_000)
    row.click()
    expect(page.locator("#awaiting-view")).to_be_visible(timeout=10_000)
    expect(page.locator("#submit-plan")).to_be_disabled()
    expect(page.locator("#approve")).to_be_hidden()
    expect(page.locator("#decision-note")).to_contain_text("approver role")
    expect(page.locator("#cancel-awaiting")).to_be_hidden()
    actions = re.compile(r"^\s*(Submit|Approve|Reject|Request changes|Cancel)")
    expect(page.locator("button:visible:enabled", has_text=actions)).to_have_count(0)
    page.screenshot(path=str(tmp_path / "2-viewer.png"), full_page=True)
    sign_out(page)

    # alice, an approver, stays signed in across a reload (the token is in sessionStorage), and
    # the page keeps the view in its URL.
    sign_in_as(page, alice, "alice", "approver")
    page.goto(base + "/ui/queue?view=awaiting")
    page.reload()
    expect(page.locator("#who-name")).to_have_text("alice", timeout=10_000)
    expect(page.locator("a[data-view=awaiting]")).to_have_attribute("aria-current", "page")
    expect(row).to_be_visible(timeout=10_000)
    row.click()
    expect(page.locator("#approve")).to_be_enabled(timeout=10_000)

    # Approve, confirmed: the processing view comes with the approve answer (the status stream
    # is cut until then, so no stream event can be what switched the view; how fast the answer
    # comes is bench/approve.py's to measure, not a test's on a busy machine).
    page.click("#approve")
    expect(page.locator("#confirm-text")).to_contain_text("This is approval 1 of 1: the plan runs.")
    page.click("#confirm-ok")
    expect(page.locator("#processing-view")).to_be_visible(timeout=10_000)
    expect(page.locator("#awaiting-view")).to_be_hidden()
    assert page.locator("#event-log li").count() == 0
    expect(page.locator("#detail-people")).to_contain_text("Approved by alice.")
    stored = read_json(f"{base}/workflows/{workflow_id}", alice)["workflow"]
    assert [(a["approver"], a["etag"]) for a in stored["approvals"]] == [("alice", stored["etag"])]  # the one shown
    page.screenshot(path=str(tmp_path / "3-processing.png"), full_page=True)
    page.unroute(STREAM)  # the page reconnects by itself (after a few seconds at most)

    # The stream drives the progress bar and the event log to the end; then the findings.
    expect(page.locator("#done-view")).to_be_visible(timeout=60_000)
    expect(page.locator("#detail-status")).to_have_text("COMPLETED")
    # The findings are fetched after the end shows: wait for their first row, then look at them.
    expect(page.locator("#findings tbody tr").first).to_be_visible(timeout=30_000)
    assert page.locator("#findings tbody tr").count() > 0
    severities = page.locator("#findings tbody tr td:nth-child(2)").all_inner_texts()
    assert set(severities) <= {"high", "medium", "low"} and severities[0] == "high"  # high first
    summaries = page.locator("#step-summaries li").all_inner_texts()
    assert any(line.startswith("duplicate_payments: 3 findings") for line in summaries), summaries
    expect(page.locator("#findings-count")).to_contain_text("findings, high first")
    shown, total = map(int, re.findall(r"\d+", page.locator("#findings-count").inner_text())[:2])
    assert shown == page.locator("#findings tbody tr").count() and total >= shown
    with page.expect_download() as download:
        page.click("button.export[data-format=csv]")
    with Path(download.value.path()).open(newline="") as exported:
        rows = list(csv.DictReader(exported))
    assert len(rows) == total and rows[0]["severity"] == "high"
    log = page.locator("#event-log li").all_inner_texts()
    assert any("APPROVED" in line for line in log) and any("COMPLETED" in line for line in log), log
    progress = page.locator("#progress")
    assert progress.get_attribute("value") == progress.get_attribute("max")
    page.screenshot(path=str(tmp_path / "4-findings.png"), full_page=True)
    assert (tmp_path / "4-findings.png").stat().st_size > 0

    content = page.content()
    for secret in (carol, vera, alice, bad):
        assert not seen.leaks(secret, content)
    assert not seen.unexpected_errors(), seen.unexpected_errors()


# --- against a stand-in backend ---------------------------------------------------------------

ORIGIN = "http://auditflow.test"
TOKEN = "aft_stand-in-token"
RUNNING = {
    "workflow_id": "wf_1",
    "title": "Running",
    "created_by": "carol",
    "status": "WORKFLOW_STATUS_RUNNING",
    "progress": {"done": 0, "total": 2},
    "is_processing": True,
    "plan": [{"procedure": "test_noop", "parameters": {}}, {"procedure": "test_noop", "parameters": {}}],
}
FINISHED = {
    **RUNNING,
    "status": "WORKFLOW_STATUS_COMPLETED",
    "progress": {"done": 2, "total": 2},
    "is_processing": False,
    "decided_by": "alice",
    "result": {"steps": []},
}
AWAITING = {
    "workflow_id": "wf_2",
    "title": "Awaiting",
    "created_by": "carol",
    "status": "WORKFLOW_STATUS_AWAITING_APPROVAL",
    "progress": {"done": 0, "total": 1},
    "etag": "2" * 64,
    "plan": [{"procedure": "ledger_summary", "parameters": {"path": "ledger.csv"}}],
}
REFUSAL = "pat may not approve workflow wf_2: the approver role is needed"


def update(sequence: int, done: int) -> str:
    event = {"sequence": sequence, "type": "EVENT_TYPE_CYCLE_COMPLETED", "message": f"cycle {sequence}"}
    snapshot = {"status": "WORKFLOW_STATUS_RUNNING", "progress": {"done": done, "total": 2}, "is_processing": True}
    return json.dumps({"event": event, "snapshot": snapshot})


# wf_1 over two connections: the first drops after event 1 (with odd line ends and a
# heartbeat); the second must resume after it, and ends the stream.
STREAM_BODIES = [
    f"retry: 300\r\n\r\n: heartbeat\n\nid: 1\ndata: {update(1, 1)}\r\n\r\n",
    f"id: 2\ndata: {update(2, 2)}\n\nevent: end\ndata: {{}}\n\n",
]


def error(status: int, name: str, message: str) -> dict[str, Any]:
    return {"status": status, "json": {"code": 0, "status": name, "message": message, "details": []}}


class StandIn:
    """Answers the page as a gateway would (`proxy_user`: as if a trusted proxy identified the
    caller), and records the requests of wf_1's status stream."""

    def __init__(self, proxy_user: str = "") -> None:
        self.proxy_user = proxy_user
        self.expired = ""  # once set, every call is refused with this message
        self.streams: list[tuple[float, dict[str, str]]] = []

    def handle(self, route: Any) -> None:
        request = route.request
        path = request.url.removeprefix(ORIGIN).split("?")[0]
        if path == "/" or path.startswith("/static/"):
            route.fulfill(path=str(STATIC / ("index.html" if path == "/" else path.removeprefix("/static/"))))
        else:
            route.fulfill(**self.answer(request, path))

    def answer(self, request: Any, path: str) -> dict[str, Any]:
        authorization = request.all_headers().get("authorization")
        if self.expired or authorization not in (f"Bearer {TOKEN}", None) or not (authorization or self.proxy_user):
            return error(401, "UNAUTHENTICATED", self.expired or "the bearer token is not valid here")
        if path == "/whoami":
            if authorization:
                return {"json": {"principal": "alice", "roles": ["approver"], "authenticated_by": "token:stand-in"}}
            return {"json": {"principal": self.proxy_user, "roles": ["approver"], "authenticated_by": "proxy:10.0.0.5"}}
        if path == "/ui/sample-plan":
            return {"json": []}
        headers = {"Content-Type": "text/event-stream"}
        if path == "/workflows:watch":
            added = [{"change": {"type": "CHANGE_TYPE_ADDED", "workflow": w}} for w in (RUNNING, AWAITING)]
            synced = {"synced": {"next_page_token": ""}, "resume_token": "1"}
            return {"body": "".join(f"data: {json.dumps(m)}\n\n" for m in [*added, synced]), "headers": headers}
        if path.endswith("/trail"):
            return {"json": {"intact": True, "events_checked": "2"}}
        if path == "/workflows/wf_1":
            return {"json": {"workflow": FINISHED if len(self.streams) >= 2 else RUNNING}}
        if path == "/workflows/wf_2":
            return {"json": {"workflow": AWAITING}}
        if path == "/workflows/wf_1/findings":
            return {"json": {"findings": [], "next_page_token": "", "total": "0"}}
        if path == "/workflows/wf_2/approve":
            return error(403, "PERMISSION_DENIED", REFUSAL)
        if path == "/workflows/wf_1/status/stream":
            self.streams.append((time.monotonic(), request.all_headers()))
            return {"body": STREAM_BODIES[min(len(self.streams), len(STREAM_BODIES)) - 1], "headers": headers}
        if path == "/workflows/wf_2/status/stream":
            return {"body": ": heartbeat\n\n", "headers": headers}
        return error(404, "NOT_FOUND", path)


def test_the_status_stream_resumes_with_last_event_id(browser: Any) -> None:
    from playwright.sync_api import expect

    backend = StandIn()
    page = browser.new_page()
    seen = Recorder(page)
    page.route(f"{ORIGIN}/**", backend.handle)
    page.add_init_script(f"sessionStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(TOKEN)})")
    page.goto(ORIGIN + "/")

    expect(page.locator("#who-name")).to_have_text("alice", timeout=10_000)
    expect(page.locator("#who-via")).to_contain_text("stand-in")
    page.click("a[data-view=all]")
    page.locator('#workflow-table tr[data-workflow-id="wf_1"]').click()
    expect(page.locator("#done-view")).to_be_visible(timeout=15_000)
    expect(page.locator("#detail-people")).to_have_text("Submitted by carol. Approved by alice.")
    expect(page.locator("#event-log li")).to_have_count(2)  # event 1 once, though it came before the drop
    log = page.locator("#event-log li").all_inner_texts()
    assert log[0].startswith("#1 ") and log[1].startswith("#2 ") and "CYCLE_COMPLETED: cycle 2" in log[1], log

    assert len(backend.streams) == 2, backend.streams
    (first_at, first), (second_at, second) = backend.streams
    for headers in (first, second):
        assert headers.get("authorization") == f"Bearer {TOKEN}"
        assert "text/event-stream" in headers.get("accept", "")
    assert "last-event-id" not in first
    assert second.get("last-event-id") == "1"
    assert second_at - first_at >= 0.25  # the server's `retry: 300`, not at once
    assert not seen.leaks(TOKEN, page.content())
    assert not seen.unexpected_errors(), seen.unexpected_errors()


def test_proxy_identity_a_refusal_and_a_lost_session(browser: Any) -> None:
    from playwright.sync_api import expect

    backend = StandIn(proxy_user="pat")
    page = browser.new_page()
    seen = Recorder(page)
    page.route(f"{ORIGIN}/**", backend.handle)
    page.goto(ORIGIN + "/")

    # A trusted proxy identified pat: signed in without a token; signing out is the proxy's job.
    expect(page.locator("#who-name")).to_have_text("pat", timeout=10_000)
    expect(page.locator("#who-via")).to_contain_text("proxy")
    page.click("#sign-out")
    expect(page.locator("#account-note")).to_contain_text("sign out there")
    expect(page.locator("#signed-in")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0

    # The server refuses pat's approval: the page shows why.
    page.locator('#workflow-table tr[data-workflow-id="wf_2"] a').click()
    expect(page.locator("#detail-id")).to_have_text("wf_2")
    page.click("#approve")
    page.click("#confirm-ok")
    expect(page.locator("#action-error")).to_have_text(f"PERMISSION_DENIED: {REFUSAL}", timeout=10_000)

    # The session stops working: the next call returns the page to the sign-in form, saying why.
    backend.expired = "the session expired; sign in again"
    page.click("#back")
    expect(page.locator("#signin-form")).to_be_visible(timeout=10_000)
    expect(page.locator("#signin-error")).to_have_text(backend.expired)
    for section in ("#workflows", "#detail", "#signed-in"):
        expect(page.locator(section)).to_be_hidden()
    watch = "/workflows:watch?page_size=50&awaiting_my_approval=true"
    expected = [("status of 403", "/approve"), ("status of 401", watch)]
    expected.append(("status of 401", "/status/stream"))  # if wf_2's stream reconnected meanwhile
    assert not seen.unexpected_errors(*expected), seen.unexpected_errors(*expected)
