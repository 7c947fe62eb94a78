"""The web page under `/ui/`: static HTML and plain JavaScript from `static/`, no build step.

Every view has its own URL under `/ui/` (`/ui/queue?view=mine`, `/ui/workflows/{id}`), apart
from the REST API's paths: each answers the same `index.html`, whose script shows what the URL
names. `/` sends the browser to `/ui/`. The page uses the REST API like any other client; the one
extra route, `GET /ui/sample-plan`, gives the CLI's sample plan
(`auditflow.sample.sample_plan()`, the one the CLI submits too) to pre-fill the submit form.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from auditflow.sample import sample_plan
from gateway.rest.routes import to_json

STATIC = Path(str(resources.files("gateway.rest") / "static"))
PAGE = "/ui/"
SAMPLE_PLAN_PATH = "/ui/sample-plan"


@functools.cache
def sample_plan_json() -> str:
    steps: list[Any] = [to_json(step) for step in sample_plan()]
    return json.dumps(steps, separators=(",", ":"))


async def _index(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(STATIC / "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


async def _to_page(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(PAGE)


async def _sample_plan(request: web.Request) -> web.StreamResponse:
    return web.Response(text=sample_plan_json(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    """`/ui/*` (the sample plan, then the page for any other path), `/` and `/static/*`."""
    app.router.add_get("/", _to_page)
    app.router.add_get("/ui", _to_page)
    app.router.add_get(SAMPLE_PLAN_PATH, _sample_plan)
    app.router.add_get("/ui/{tail:.*}", _index)
    app.router.add_static("/static/", STATIC, append_version=False)
