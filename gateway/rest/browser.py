"""What a browser needs told: security headers on every answer, and no cross-site writes.

A caller identified by a trusted proxy carries no credential of its own: the proxy adds the
user's header to whatever the browser sends, its session cookie being enough. Any site the
user visits could then make the browser post to the gateway (cross-site request forgery).
So a state-changing call (any method but GET, HEAD, OPTIONS) from such a caller must be JSON
(`Content-Type: application/json`, which a plain HTML form cannot send and a cross-origin
script can send only after a CORS preflight the gateway answers for the listed origins) and
must come from the gateway's own origin or a listed one (the `Origin` header, which browsers
set on every such request and pages cannot forge). A bearer token is never sent by a browser
on its own, so calls that carry one need neither check.

The headers keep the status page in its own frame and its own code: a Content Security
Policy that allows scripts, styles and connections only from the gateway itself (no inline
script or style), no framing by other sites, no content-type sniffing, no Referer.
"""

from __future__ import annotations

import urllib.parse

from aiohttp import web

from auditflow.errors import CrossSiteRequest, InvalidArgument
from auditflow.principal import Principal

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON = "application/json"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp's on_response_prepare signal: every answer (errors, files and streams
    included) gets the headers before they are sent."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)


def check_write(request: web.Request, caller: Principal, origins: frozenset[str]) -> None:
    """Refuse a state-changing call that a browser may have been made to send by another site:
    only callers identified by a trusted proxy are at risk (see the module's docstring)."""
    if request.method in SAFE_METHODS or not caller.via.startswith("proxy:"):
        return
    if request.content_type != JSON:
        raise InvalidArgument(
            f"a {request.method} through the identity proxy must be JSON: send Content-Type: {JSON}",
            reason="JSON_REQUIRED",
        )
    origin = request.headers.get("Origin")
    if origin is None:
        raise CrossSiteRequest("a change through the identity proxy needs the Origin header of the page that sends it")
    if not _same_origin(origin, request.host) and origin not in origins and "*" not in origins:
        raise CrossSiteRequest(f"changes are accepted only from this gateway's own pages, not from {origin[:200]}")


def _same_origin(origin: str, host: str) -> bool:
    """True if `origin` names the host and port the request was sent to (its Host header). The
    scheme is not compared: a proxy in front may end TLS and speak plain HTTP to the gateway."""
    try:
        return urllib.parse.urlsplit(origin).netloc.lower() == host.lower()
    except ValueError:
        return False
