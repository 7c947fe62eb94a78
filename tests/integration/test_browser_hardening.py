"""What the REST gateway tells and refuses browsers, on a real gateway and processor pair:
security headers on every answer, no cross-site writes through the identity proxy, and
streams that end when their caller's token is revoked."""

from __future__ import annotations

import asyncio
import html.parser
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from auditflow.auth.tokens import append_entry
from gateway.rest import browser
from gateway.server import Gateway
from gateway.server import create_server as create_gateway
from gateway.settings import Settings as GatewaySettings
from processor.server import Processor
from processor.server import create_server as create_processor
from processor.settings import Settings as ProcessorSettings
from tests.support import auth

PLUGINS = ("tests.support.procedures",)
SAMPLE_PLAN = [{"procedure": "ledger_summary", "parameters": {"path": "ledger.csv"}}]
PROXY = {"X-Auditflow-User": "pat", "X-Groups": "submitter"}
LISTED = "http://ui.example"


@dataclass
class Pair:
    gateway: Gateway
    processor: Processor
    url: str
    tokens: Path


def token_file(path: Path, principal: str, roles: list[str]) -> str:
    token = append_entry(path, principal, principal, roles)
    auth.MINTED.add(token)
    return token


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    tokens = tmp_path / "tokens.toml"
    processor = create_processor(
        "127.0.0.1:0",
        ProcessorSettings(**auth.processor_settings(), database_url=f"sqlite:///{tmp_path / 'p.db'}", plugins=PLUGINS),
    )
    await processor.start()
    identities = auth.gateway_auth(
        tokens_file=str(tokens),
        proxy_user_header="X-Auditflow-User",
        proxy_groups_header="X-Groups",
        trusted_proxies=("127.0.0.1/32",),
    )
    token_file(tokens, "first", ["viewer"])  # (the file must exist before the gateway starts)
    gateway = create_gateway(
        "127.0.0.1:0",
        GatewaySettings(
            **{**auth.gateway_settings(), "auth": identities},
            database_url=f"sqlite:///{tmp_path / 'g.db'}",
            processor_target=processor.address,
            plugins=PLUGINS,
            rest_port=0,
            rest_cors_origins=(LISTED,),
        ),
    )
    await gateway.start()
    assert gateway.rest is not None
    yield Pair(gateway, processor, gateway.rest.url, tokens)
    await gateway.stop(0)
    await processor.stop(1)


async def test_every_answer_carries_the_security_headers(pair: Pair) -> None:
    async with aiohttp.ClientSession() as http:
        for path, status in (("/", 200), ("/static/app.js", 200), ("/whoami", 401), ("/nowhere", 404)):
            async with http.get(pair.url + path) as answer:
                assert answer.status == status, path
                for name, value in browser.HEADERS.items():
                    assert answer.headers.get(name) == value, (path, name)
        async with http.post(pair.url + "/workflows", headers=auth.headers("carol"), json={"plan": []}) as answer:
            assert answer.status == 400 and answer.headers["X-Frame-Options"] == "DENY"
    csp = browser.CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp


class _Inline(html.parser.HTMLParser):
    """What the Content Security Policy would block in a page: inline script and style."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "style" or (tag == "script" and not names.get("src")):
            self.found.append(f"<{tag}>")
        self.found += [f"{tag} {name}" for name in names if name == "style" or name.startswith("on")]
        self.found += [f"{tag} {v}" for v in names.values() if (v or "").strip().lower().startswith("javascript:")]


def test_the_status_page_has_no_inline_script_or_style() -> None:
    for page in (Path(browser.__file__).parent / "static").glob("*.html"):
        parser = _Inline()
        parser.feed(page.read_text())
        assert parser.found == [], page


async def _create(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(url + "/workflows", **kwargs) as answer:
        return answer.status, await answer.json()


async def test_a_write_through_the_proxy_must_be_json_from_this_origin(pair: Pair) -> None:
    host = pair.url.removeprefix("http://")
    body = json.dumps({"title": "Q3", "plan": SAMPLE_PLAN})
    async with aiohttp.ClientSession() as http:
        refused = [
            # a form another site posts: not JSON, whatever its origin
            ({"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"}, 400),
            ({"Content-Type": "text/plain", "Origin": f"http://{host}"}, 400),
            # JSON from a script of another origin, or with no origin to tell
            ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
            ({"Content-Type": "application/json", "Origin": "null"}, 403),
            ({"Content-Type": "application/json"}, 403),
        ]
        for headers, status in refused:
            code, answer = await _create(http, pair.url, data=body, headers={**PROXY, **headers})
            assert code == status, (headers, answer)
            reason = answer["details"][0]["reason"]
            assert reason == ("JSON_REQUIRED" if status == 400 else "CROSS_SITE_REQUEST"), answer
        async with http.get(pair.url + "/workflows", headers=PROXY) as listed:
            assert (await listed.json()).get("workflows", []) == []  # nothing stored
        for origin in (f"http://{host}", f"https://{host}", LISTED):
            headers = {**PROXY, "Content-Type": "application/json", "Origin": origin}
            code, answer = await _create(http, pair.url, data=body, headers=headers)
            assert code == 200, (origin, answer)
        # a bearer token is never sent by a browser on its own: no check applies
        code, answer = await _create(http, pair.url, data=body, headers={**auth.headers("carol"), "Content-Type": ""})
        assert code == 200, answer


async def _first_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) of an SSE stream, in order."""
    name, data = "message", ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line == "":
            if data:
                yield name, data
            name, data = "message", ""
        elif line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data = line.partition(":")[2].strip()


async def _until_accepted(http: aiohttp.ClientSession, url: str, token: str) -> None:
    """Wait for the gateway to read a token added to its file (it looks every 2 s)."""
    for _ in range(600):
        async with http.get(url + "/whoami", headers={"Authorization": f"Bearer {token}"}) as answer:
            if answer.status == 200:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway never read the new token")


async def test_a_stream_ends_when_its_token_is_revoked(pair: Pair) -> None:
    watcher = token_file(pair.tokens, "vic", ["viewer"])
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await _until_accepted(http, pair.url, watcher)
        headers = {**auth.headers("carol"), "Content-Type": "application/json"}
        code, created = await _create(http, pair.url, json={"title": "Q3", "plan": SAMPLE_PLAN}, headers=headers)
        assert code == 200, created
        path = f"{pair.url}/workflows/{created['workflow']['workflow_id']}/status/stream"
        async with http.get(path, headers={"Authorization": f"Bearer {watcher}"}) as stream:
            assert stream.status == 200
            events = _first_events(stream)
            assert (await anext(events))[0] == "message"  # awaiting approval: the stream stays open
            replacement = pair.tokens.with_name("tokens.new.toml")
            token_file(replacement, "other", ["viewer"])
            os.replace(replacement, pair.tokens)  # vic's token is gone
            name, data = await asyncio.wait_for(anext(events), 30)
            assert name == "error" and json.loads(data)["status"] == "UNAUTHENTICATED", (name, data)
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(events), 30)
