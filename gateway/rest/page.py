"""The status page at `/`: static HTML and plain JavaScript from `static/`, no build step.

It uses the REST API like any other client; the one extra route, `GET /ui/sample-plan`, gives
the CLI's sample plan (`auditflow.cli.commands.sample_plan()`) to pre-fill the submit form.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.rest.routes import to_json

STATIC = Path(str(resources.files("gateway.rest") / "static"))
SAMPLE_PLAN_PATH = "/ui/sample-plan"


@functools.cache
def sample_plan_json() -> str:
    from auditflow.cli.commands import sample_plan  # the CLI's, so that both submit the same plan

    steps: list[Any] = [to_json(step) for step in sample_plan()]
    return json.dumps(steps, separators=(",", ":"))


async def _index(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(STATIC / "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


async def _sample_plan(request: web.Request) -> web.StreamResponse:
    return web.Response(text=sample_plan_json(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    """`/`, `/static/*` and the sample plan."""
    app.router.add_get("/", _index)
    app.router.add_get(SAMPLE_PLAN_PATH, _sample_plan)
    app.router.add_static("/static/", STATIC, append_version=False)
