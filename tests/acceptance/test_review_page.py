"""The approver's work queue and review page, in headless Chromium against a real gateway and
processor: a deep link shows the whole plan and Approve sends the etag shown; a revision made
after the page showed the plan makes the approval fail and shows what changed; "Awaiting my
approval" lists exactly the plans each of three approvers may still approve; a workflow
created through the API appears in an open list within 2 s; reject needs a reason; a ledger
changed after approval fails the run; at 360 px nothing scrolls sideways.

Screenshots go to the test's tmp_path (`pytest --basetemp DIR` keeps them somewhere known)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import auth
from tests.support.browser import STREAM, Recorder, sign_in_as, wait_http
from tests.support.cluster import Pair

CAROL = auth.jwt_for("carol", ("submitter",))
ALICE = auth.jwt_for("alice", ("approver",))
BOB = auth.jwt_for("bob", ("approver",))
DAVE = auth.jwt_for("dave", ("approver",))
SAMPLE_LEDGER = Path(__file__).resolve().parents[2] / "auditflow" / "samples" / "ledger.csv"


class Api:
    """The REST API as a named person (the way another client would use it beside the page)."""

    def __init__(self, pair: Pair) -> None:
        self.base = f"http://127.0.0.1:{pair.gateway.rest_port}"
        wait_http(self.base + "/ui/")

    def call(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def ok(self, method: str, path: str, token: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, token, body)
        assert status == 200, (method, path, status, answer)
        return answer

    def create(self, token: str, title: str, plan: list[Any], approvals: int = 1) -> dict[str, Any]:
        body = {"title": title, "plan": plan, "required_approvals": approvals}
        return dict(self.ok("POST", "/workflows", token, body)["workflow"])

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        return dict(self.ok("GET", f"/workflows/{workflow_id}", CAROL)["workflow"])

    def sample_plan(self, steps: int = 3) -> list[Any]:
        return list(self.ok("GET", "/ui/sample-plan", CAROL)[:steps])


def open_as(browser: Any, url: str, token: str, name: str, width: int = 1280) -> tuple[Any, Recorder]:
    page = browser.new_page(viewport={"width": width, "height": 900})
    seen = Recorder(page)
    page.goto(url)
    sign_in_as(page, token, name, "approver" if token != CAROL else "submitter")
    return page, seen


def as_js(value: Any) -> str:
    """A parameter as the page prints it (JSON.stringify: 5.0 is 5)."""

    def plain(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return json.dumps(plain(value), separators=(",", ":"), ensure_ascii=False)


def queue_ids(page: Any) -> set[str]:
    return set(page.locator("#workflow-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.workflowId)"))


def confirmed(page: Any, button: str, says: str, sent_to: str) -> Any:
    """Click `button`, check that the confirmation says `says`, confirm: the request sent."""
    from playwright.sync_api import expect

    page.click(button)
    expect(page.locator("#confirm-text")).to_contain_text(says)
    with page.expect_request(sent_to) as sent:
        page.click("#confirm-ok")
    return sent.value


def no_overflow(page: Any) -> bool:
    return bool(page.evaluate("() => document.scrollingElement.scrollWidth <= document.scrollingElement.clientWidth"))


def test_an_approver_reviews_the_whole_plan_from_a_link_and_approves_what_was_shown(
    pair: Pair, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    api = Api(pair)
    plan = api.sample_plan(steps=100)
    created = api.create(CAROL, "Q4 ledger review", plan)
    workflow_id = created["workflow_id"]
    link = f"{api.base}/ui/workflows/{workflow_id}"
    page, seen = open_as(browser, link, ALICE, "alice")

    # The link opens the workflow after sign-in; every step, parameter and data file is shown.
    expect(page).to_have_url(link)
    steps = page.locator("#plan-steps > li")
    expect(steps).to_have_count(len(plan), timeout=10_000)
    for button in page.locator("#plan-steps button", has_text="show all").all():
        button.click()
    for index, step in enumerate(created["plan"]):
        item = steps.nth(index)
        expect(item.locator(".procedure")).to_have_text(step["procedure"])
        names = item.locator(".parameters dt").all_inner_texts()
        values = item.locator(".parameters dd code").all_inner_texts()
        assert dict(zip(names, values, strict=True)) == {k: as_js(v) for k, v in step["parameters"].items()}
        for source in step["sources"]:
            shown = item.locator(".source", has_text=source["path"])
            expect(shown.locator(".sha")).to_have_text(source["sha256"][:16])
    expect(page.locator("#detail-revision")).to_contain_text(f"Revision 1 · etag {created['etag'][:12]}")
    expect(page.locator("#approvals-summary")).to_have_text("0 of 1 approval: 1 more needed.")
    expect(page.locator("#trail-status")).to_contain_text("Verified", timeout=10_000)
    page.screenshot(path=str(tmp_path / "detail.png"), full_page=True)

    # From the keyboard: a comment, Tab to Approve, Enter; the dialog names the workflow, the
    # revision and what this approval completes; Tab to its confirm button, Enter.
    page.focus("#decision-comment")
    page.keyboard.type("figures agree with the ledger")
    page.keyboard.press("Tab")
    expect(page.locator("#approve")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-title")).to_have_text("Approve “Q4 ledger review”?")
    expect(page.locator("#confirm-text")).to_have_text(
        f"Workflow {workflow_id}, revision 1. This is approval 1 of 1: the plan runs."
    )
    page.keyboard.press("Tab")
    expect(page.locator("#confirm-ok")).to_be_focused()
    with page.expect_request("**/approve") as sent:
        page.keyboard.press("Enter")
    assert sent.value.post_data_json == {"etag": created["etag"], "comment": "figures agree with the ledger"}
    assert sent.value.headers.get("authorization") == f"Bearer {ALICE}"

    # The run: each step's status, cycles, duration and findings; then the findings table.
    expect(page.locator("#done-view")).to_be_visible(timeout=60_000)
    expect(page.locator("#detail-status")).to_have_text("COMPLETED")
    rows = page.locator("#step-status tbody tr")
    expect(rows).to_have_count(len(plan))
    expect(rows.locator("td:nth-child(2)", has_text="done")).to_have_count(len(plan), timeout=10_000)
    for row in rows.all():
        cells = row.locator("td").all_inner_texts()
        assert int(cells[2]) >= 1 and re.fullmatch(r"\d+\.\d s", cells[3]) and cells[4].isdigit(), cells
    stored = api.workflow(workflow_id)
    assert [(a["approver"], a["etag"], a["comment"]) for a in stored["approvals"]] == [
        ("alice", created["etag"], "figures agree with the ledger")
    ]

    # Filtered by procedure, paged, exported as CSV with the same filter.
    expect(page.locator("#findings tbody tr").first).to_be_visible(timeout=30_000)
    page.select_option("#findings-procedure", "duplicate_payments")
    expect(page.locator("#findings-count")).to_contain_text("of 3 findings")
    assert set(page.locator("#findings tbody td:nth-child(4)").all_inner_texts()) == {"duplicate_payments"}
    with page.expect_download() as download:
        page.click("button.export[data-format=csv]")
    with Path(download.value.path()).open(newline="") as exported:
        assert [row["procedure"] for row in csv.DictReader(exported)] == ["duplicate_payments"] * 3

    # At 360 px the finished run, findings included, needs no sideways scrolling at all.
    page.set_viewport_size({"width": 360, "height": 900})
    assert no_overflow(page)
    assert page.evaluate("() => [...document.querySelectorAll('.scroll')].every(e => e.scrollWidth <= e.clientWidth)")
    assert not seen.leaks(ALICE, page.content())
    assert not seen.unexpected_errors(), seen.unexpected_errors()


def test_a_plan_revised_after_it_was_shown_is_not_approved_and_its_changes_are_shown(pair: Pair, browser: Any) -> None:
    from playwright.sync_api import expect

    api = Api(pair)
    plan = api.sample_plan(steps=2)
    created = api.create(CAROL, "Vendor ranking", plan)
    workflow_id = created["workflow_id"]
    page, seen = open_as(browser, f"{api.base}/ui/workflows/{workflow_id}", ALICE, "alice")
    page.route(STREAM, lambda route: route.abort())  # the page must not learn of the revision live
    page.reload()
    expect(page.locator("#approve")).to_be_enabled(timeout=10_000)
    expect(page.locator("#approve")).to_have_text("Approve revision 1")

    # carol revises the plan while alice reads it.
    revised = [plan[0], {**plan[1], "parameters": {**plan[1]["parameters"], "top": 10}}]
    body = {"etag": created["etag"], "plan": revised, "reason": "rank ten vendors"}
    new = api.ok("POST", f"/workflows/{workflow_id}/revise", CAROL, body)["workflow"]
    assert new["revision"] == 2

    page.click("#approve")
    with page.expect_response("**/approve") as answered:
        page.click("#confirm-ok")
    assert answered.value.status == 409
    assert answered.value.request.post_data_json["etag"] == created["etag"]
    expect(page.locator("#action-note")).to_contain_text("revision 1 → 2", timeout=10_000)
    expect(page.locator("#detail-revision")).to_contain_text(f"Revision 2 · etag {new['etag'][:12]}")
    expect(page.locator("#diff")).to_be_visible()
    expect(page.locator("#diff-heading")).to_contain_text("since revision 1, the one you last saw")
    expect(page.locator("#diff-table tbody tr", has_text="top")).to_contain_text("10")
    expect(page.locator("#plan-steps > li").nth(1).locator(".parameters")).to_contain_text("10")
    # Nothing was approved for alice, and the page does not approve the new revision by itself.
    expect(page.locator("#approve")).to_have_text("Approve revision 2")
    stored = api.workflow(workflow_id)
    assert stored["status"] == "WORKFLOW_STATUS_AWAITING_APPROVAL" and stored["approvals"] == []
    assert sum(url.endswith("/approve") for url in seen.urls) == 1

    # With the status stream back, a revision made while the page is open shows at once, and a
    # reload shows the same changes again.
    page.unroute(STREAM)
    third = [plan[0], {**plan[1], "parameters": {**plan[1]["parameters"], "top": 7}}]
    body = {"etag": new["etag"], "plan": third, "reason": "seven is enough"}
    api.ok("POST", f"/workflows/{workflow_id}/revise", CAROL, body)
    expect(page.locator("#action-note")).to_contain_text(
        "revised while you had it open (revision 2 → 3)", timeout=15_000
    )
    expect(page.locator("#approve")).to_have_text("Approve revision 3")
    page.reload()
    expect(page.locator("#diff-heading")).to_contain_text("in revision 3 since revision 2, the one you last saw")
    expect(page.locator("#diff-table tbody tr", has_text="top")).to_contain_text("7")
    expected = [("status of 409", "/approve"), ("net::ERR_FAILED", "/status/stream")]
    assert not seen.unexpected_errors(*expected), seen.unexpected_errors(*expected)


def test_awaiting_my_approval_lists_exactly_what_each_approver_may_approve(
    pair: Pair, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    api = Api(pair)
    plan = api.sample_plan(steps=1)
    two = api.create(CAROL, "Needs two", plan, approvals=2)
    api.ok("POST", f"/workflows/{two['workflow_id']}/approve", ALICE, {"etag": two["etag"]})  # alice is done
    one = api.create(CAROL, "Needs one", plan)
    bobs = api.create(BOB, "Bob's own", plan)  # bob may not approve his own plan
    rejected = api.create(CAROL, "Rejected", plan)
    api.ok("POST", f"/workflows/{rejected['workflow_id']}/reject", DAVE, {"etag": rejected["etag"], "comment": "no"})

    expected = {
        ("alice", ALICE): {one["workflow_id"], bobs["workflow_id"]},
        ("bob", BOB): {two["workflow_id"], one["workflow_id"]},
        ("dave", DAVE): {two["workflow_id"], one["workflow_id"], bobs["workflow_id"]},
    }
    for (name, token), ids in expected.items():
        page, seen = open_as(browser, f"{api.base}/", token, name)
        expect(page).to_have_url(f"{api.base}/ui/queue?view=awaiting")  # an approver's default view
        expect(page.locator("#list-live")).to_contain_text("Live", timeout=10_000)
        expect(page.locator("#workflow-table tbody tr")).to_have_count(len(ids))
        assert queue_ids(page) == ids, name
        if name == "dave":
            page.screenshot(path=str(tmp_path / "queue.png"), full_page=True)
        assert not seen.unexpected_errors(), seen.unexpected_errors()
        page.close()


def test_a_workflow_created_elsewhere_appears_in_an_open_list_without_a_reload(pair: Pair, browser: Any) -> None:
    """(How soon it appears is bench/collection.py's to measure, not a test's on a busy machine.)"""
    from playwright.sync_api import expect

    api = Api(pair)
    plan = api.sample_plan(steps=1)
    page, seen = open_as(browser, f"{api.base}/ui/queue?view=all&q=live", ALICE, "alice")
    expect(page.locator("#list-live")).to_contain_text("Live", timeout=10_000)
    expect(page.locator("#filter-title")).to_have_value("live")
    page.evaluate("() => { window.notReloaded = true; }")

    created = api.create(CAROL, "A live one", plan)
    api.create(CAROL, "Filtered out by the title search", plan)
    row = page.locator(f'#workflow-table tr[data-workflow-id="{created["workflow_id"]}"]')
    expect(row).to_be_visible(timeout=10_000)
    expect(page.locator("#workflow-table tbody tr")).to_have_count(1)

    # A change to it shows too (a rejection through the API).
    api.ok("POST", f"/workflows/{created['workflow_id']}/reject", DAVE, {"etag": created["etag"], "comment": "no"})
    expect(row.locator(".badge")).to_have_text("REJECTED", timeout=10_000)
    assert page.evaluate("() => window.notReloaded") is True

    # Back and forward between views; a reload keeps the view.
    page.click("a[data-view=mine]")
    expect(page).to_have_url(f"{api.base}/ui/queue?view=mine&q=live")
    page.go_back()
    expect(page).to_have_url(f"{api.base}/ui/queue?view=all&q=live")
    expect(row).to_be_visible(timeout=10_000)
    page.reload()
    expect(row).to_be_visible(timeout=10_000)
    expect(page.locator("a[data-view=all]")).to_have_attribute("aria-current", "page")
    assert not seen.unexpected_errors(), seen.unexpected_errors()


def test_reject_and_request_changes_need_a_reason_and_a_confirmation(pair: Pair, browser: Any) -> None:
    from playwright.sync_api import expect

    api = Api(pair)
    plan = api.sample_plan(steps=1)
    first = api.create(CAROL, "To reject", plan)
    second = api.create(CAROL, "To change", plan)
    page, seen = open_as(browser, f"{api.base}/ui/workflows/{first['workflow_id']}", ALICE, "alice")
    expect(page.locator("#approve")).to_be_enabled(timeout=10_000)

    # A comment and a reason typed for one workflow do not follow to the next one opened.
    page.fill("#decision-comment", "a comment for the first workflow")
    page.fill("#decision-reason", "a reason for the first workflow")
    page.click("#back")
    page.focus(f'#workflow-table a[href$="{second["workflow_id"]}"]')
    page.keyboard.press("Enter")  # from the keyboard: the review page, its heading focused
    # (the second workflow shown, not the first one's buttons still enabled from before)
    expect(page.locator("#detail-id")).to_have_text(second["workflow_id"], timeout=10_000)
    expect(page.locator("#approve")).to_be_enabled(timeout=10_000)
    expect(page.locator("#detail-heading")).to_be_focused(timeout=10_000)
    expect(page.locator("#decision-comment")).to_have_value("")
    expect(page.locator("#decision-reason")).to_have_value("")

    # Request changes, with a reason and a confirmation.
    page.fill("#decision-reason", "use the new ledger")
    waits = "The workflow waits for its submitter to revise the plan."
    asked = confirmed(page, "#request-changes", waits, "**/request-changes")
    assert asked.post_data_json == {"etag": second["etag"], "reason": "use the new ledger"}
    expect(page.locator("#detail-status")).to_have_text("CHANGES_REQUESTED", timeout=10_000)
    expect(page.locator("#changes-requested")).to_contain_text("alice asked for changes to revision 1")
    expect(page.locator("#changes-requested")).to_contain_text("use the new ledger")
    assert api.workflow(second["workflow_id"])["changes_requested"]["reason"] == "use the new ledger"

    # Back to the first: no reason, or only blanks, and neither button can be used, by mouse or
    # keyboard.
    page.go_back()
    page.go_back()
    expect(page).to_have_url(f"{api.base}/ui/workflows/{first['workflow_id']}")
    expect(page.locator("#approve")).to_be_enabled(timeout=10_000)
    expect(page.locator("#decision-comment")).to_have_value("")
    for reason in ("", "   \n "):
        page.fill("#decision-reason", reason)
        expect(page.locator("#reject")).to_be_disabled()
        expect(page.locator("#request-changes")).to_be_disabled()
    page.locator("#reject").click(force=True)
    page.focus("#decision-reason")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#confirm")).to_be_hidden()

    # With a reason: a confirmation first; going back sends nothing.
    page.fill("#decision-reason", "the ledger is last year's")
    page.click("#reject")
    expect(page.locator("#confirm-text")).to_contain_text("“the ledger is last year's”")
    page.click("#confirm-cancel")
    expect(page.locator("#confirm")).to_be_hidden()
    assert not any(url.endswith("/reject") for url in seen.urls)
    sent = confirmed(page, "#reject", "“the ledger is last year's”", "**/reject")
    assert sent.post_data_json == {"etag": first["etag"], "comment": "the ledger is last year's"}
    expect(page.locator("#detail-status")).to_have_text("REJECTED", timeout=10_000)
    expect(page.locator("#done-message")).to_contain_text("the ledger is last year's")
    assert not seen.unexpected_errors(), seen.unexpected_errors()


def test_a_ledger_changed_after_approval_fails_the_run_without_findings(
    pair: Pair, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    api = Api(pair)
    ledger = tmp_path / "ledger.csv"
    shutil.copyfile(SAMPLE_LEDGER, ledger)
    created = api.create(
        CAROL, "Bound to its data", [{"procedure": "duplicate_payments", "parameters": {"path": str(ledger)}}]
    )
    before = created["plan"][0]["sources"][0]["sha256"]
    assert before == hashlib.sha256(ledger.read_bytes()).hexdigest()
    page, seen = open_as(browser, f"{api.base}/ui/workflows/{created['workflow_id']}", ALICE, "alice")
    expect(page.locator("#approve")).to_be_enabled(timeout=10_000)

    # The processor is held still while alice approves and the file is replaced, so that the
    # change lands after the approval and before the step reads the file.
    os.kill(pair.processor.pid, signal.SIGSTOP)
    try:
        page.click("#approve")
        page.click("#confirm-ok")
        expect(page.locator("#processing-view")).to_be_visible(timeout=10_000)
        with ledger.open("a") as changed:
            changed.write("\n")
    finally:
        os.kill(pair.processor.pid, signal.SIGCONT)
    after = hashlib.sha256(ledger.read_bytes()).hexdigest()

    expect(page.locator("#done-view")).to_be_visible(timeout=60_000)
    expect(page.locator("#detail-status")).to_have_text("FAILED")
    message = page.locator("#done-message")
    for part in (str(ledger), before, after):
        expect(message).to_contain_text(part)
    expect(page.locator("#no-findings")).to_be_visible(timeout=10_000)
    expect(page.locator("#step-status tbody td:nth-child(2)")).to_have_text(["failed"])
    assert api.ok("GET", f"/workflows/{created['workflow_id']}/findings", CAROL)["total"] in ("0", 0)
    assert not seen.unexpected_errors(), seen.unexpected_errors()


def test_a_ledger_changed_before_approval_warns_the_approver_and_its_submitter_refreshes_it(
    pair: Pair, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    api = Api(pair)
    ledger = tmp_path / "ledger.csv"
    shutil.copyfile(SAMPLE_LEDGER, ledger)
    created = api.create(
        CAROL, "Changed data", [{"procedure": "duplicate_payments", "parameters": {"path": str(ledger)}}]
    )
    with ledger.open("a") as changed:
        changed.write("\n")
    link = f"{api.base}/ui/workflows/{created['workflow_id']}"
    page, seen = open_as(browser, link, ALICE, "alice")
    expect(page.locator("#plan-steps .source.changed .warning")).to_contain_text("no longer matches", timeout=10_000)
    expect(page.locator("#refresh-view")).to_be_hidden()  # the submitter's to do
    assert not seen.unexpected_errors(), seen.unexpected_errors()

    # carol, the submitter, refreshes the fingerprints: revision 2, bound to the file as it is.
    page, seen = open_as(browser, link, CAROL, "carol")
    expect(page.locator("#refresh-view")).to_be_visible(timeout=10_000)
    sent = confirmed(page, "#refresh-data", "gets revision 2, bound to the files as they are now", "**/revise")
    assert sent.post_data_json == {"etag": created["etag"], "reason": "data files refreshed"}
    expect(page.locator("#detail-revision")).to_contain_text("Revision 2", timeout=10_000)
    expect(page.locator("#plan-steps .warning")).to_have_count(0)
    expect(page.locator("#refresh-view")).to_be_hidden()
    source = api.workflow(created["workflow_id"])["plan"][0]["sources"][0]
    assert source["sha256"] == hashlib.sha256(ledger.read_bytes()).hexdigest() and not source["changed"]
    assert not seen.unexpected_errors(), seen.unexpected_errors()


def test_small_screens_huge_plans_unknown_links_and_labels(pair: Pair, browser: Any) -> None:
    from playwright.sync_api import expect

    api = Api(pair)
    noop = {"procedure": "test_noop", "parameters": {"note": "x" * 500}}  # within the size limit of a plan
    huge = api.create(CAROL, "A hundred steps " + "long-title " * 15, [noop] * 100)
    page, seen = open_as(browser, f"{api.base}/ui/queue?view=all", ALICE, "alice", width=360)
    expect(page.locator("#workflow-table tbody tr")).to_have_count(1, timeout=10_000)
    assert no_overflow(page)

    # A huge plan: the first 50 steps, the rest on request; long values cut, also on request.
    page.locator("#workflow-table tbody a").first.click()
    expect(page.locator("#plan-steps > li")).to_have_count(50, timeout=10_000)
    expect(page.locator("#plan-steps > li").first.locator("dd code")).to_have_text('"' + "x" * 239 + "…")
    assert no_overflow(page)
    page.click("#plan-all")
    expect(page.locator("#plan-steps > li")).to_have_count(100)
    expect(page.locator("#approve")).to_be_enabled()
    assert no_overflow(page)
    page.click("#approve")
    expect(page.locator("#confirm")).to_be_visible()
    assert no_overflow(page)
    page.click("#confirm-cancel")

    # A huge diff too: every step changed, the first 50 changes shown, the rest on request.
    changed = [{"procedure": "test_noop", "parameters": {"note": "y" * 500}}] * 100
    api.ok("POST", f"/workflows/{huge['workflow_id']}/revise", CAROL, {"etag": huge["etag"], "plan": changed})
    page.reload()
    expect(page.locator("#diff-table tbody tr")).to_have_count(50, timeout=10_000)
    expect(page.locator("#diff-all")).to_have_text("Show all 100 changes")
    assert no_overflow(page)
    page.click("#diff-all")
    expect(page.locator("#diff-table tbody tr")).to_have_count(100)
    assert no_overflow(page)

    # Every control has a label a screen reader can read.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')].filter((control) => {
            const name = control.labels && control.labels.length ? control.labels[0].textContent
              : control.getAttribute('aria-label') || control.textContent;
            return !String(name || '').trim();
        }).map((control) => control.id || control.outerHTML)"""
    )
    assert unlabelled == []

    # An unknown workflow in a link: the same not-found view as one the caller may not see.
    page.goto(f"{api.base}/ui/workflows/wf_00000000000000000000000000000000")
    expect(page.locator("#not-found")).to_be_visible(timeout=10_000)
    expect(page.locator("#detail")).to_be_hidden()
    assert no_overflow(page)
    assert huge["workflow_id"] not in page.locator("#not-found").inner_text()
    expected = ("status of 404", "/workflows/wf_00000000000000000000000000000000")
    assert not seen.unexpected_errors(expected), seen.unexpected_errors(expected)


def test_load_more_past_fifty_rows_and_a_resumed_watch_after_a_gateway_restart(pair: Pair, browser: Any) -> None:
    from playwright.sync_api import expect

    api = Api(pair)
    plan = api.sample_plan(steps=1)
    first = [api.create(CAROL, f"Batch {n}", plan)["workflow_id"] for n in range(52)]
    page, seen = open_as(browser, f"{api.base}/ui/queue?view=all", ALICE, "alice")
    watches: list[str] = []
    page.on("request", lambda request: watches.append(request.url) if "/workflows:watch" in request.url else None)
    rows = page.locator("#workflow-table tbody tr")
    expect(page.locator("#list-live")).to_contain_text("Live", timeout=10_000)
    expect(rows).to_have_count(50)
    page.click("#load-more")
    expect(rows).to_have_count(52)
    expect(page.locator("#load-more")).to_be_hidden()
    assert queue_ids(page) == set(first)

    # The gateway restarts: the page reconnects from where it was (its resume token) and misses
    # nothing: a workflow created meanwhile appears once, the others stay once each.
    pair.gateway.stop()
    pair.gateway.start()
    later = api.create(CAROL, "After the restart", plan)["workflow_id"]
    expect(page.locator(f'#workflow-table tr[data-workflow-id="{later}"]')).to_be_visible(timeout=30_000)
    expect(page.locator("#list-live")).to_contain_text("Live", timeout=10_000)
    expect(rows).to_have_count(53)
    assert queue_ids(page) == {*first, later}
    assert any("resume_token=" in url for url in watches), watches
    found = [e for e in seen.unexpected_errors() if "/workflows:watch" not in e]  # the cut stream
    assert not found, found


def test_an_approval_given_elsewhere_shows_at_once_and_counts_in_the_confirmation(pair: Pair, browser: Any) -> None:
    from playwright.sync_api import expect

    api = Api(pair)
    created = api.create(CAROL, "Two approvers", api.sample_plan(steps=1), approvals=2)
    page, seen = open_as(browser, f"{api.base}/ui/workflows/{created['workflow_id']}", ALICE, "alice")
    expect(page.locator("#approvals-summary")).to_have_text("0 of 2 approvals: 2 more needed.", timeout=10_000)

    api.ok("POST", f"/workflows/{created['workflow_id']}/approve", BOB, {"etag": created["etag"], "comment": "ok"})
    expect(page.locator("#approvals-summary")).to_have_text("1 of 2 approvals: 1 more needed.", timeout=10_000)
    expect(page.locator("#approvals-list li")).to_contain_text(["bob"])
    page.click("#approve")
    expect(page.locator("#confirm-text")).to_contain_text("This is approval 2 of 2: the plan runs.")
    with page.expect_response("**/approve") as answered:
        page.click("#confirm-ok")
    assert answered.value.status == 200
    expect(page.locator("#detail-people")).to_contain_text("Approved by alice.", timeout=10_000)
    assert not seen.unexpected_errors(), seen.unexpected_errors()
