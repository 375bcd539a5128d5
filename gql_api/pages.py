"""The development pages: GraphiQL, the live chat demo, and the static files they load.

Everything they load is served by this app from ``gql_api/static`` (built from ``frontend/`` and
committed), so they work with no network, and each page carries a Content-Security-Policy that
allows nothing from anywhere else and no inline script. None of this is served in production.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gql_api.demo import ensure_demo_data
from gql_api.state import services_of

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = "/static"
DEMO_PATH = "/demo"

# What a Host header may be for it to go into the policy: a name or address and a port.
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]+)?$|^\[[0-9A-Fa-f:.]+\](:[0-9]+)?$")


def content_security_policy(request: Request) -> str:
    """The policy of every page: this origin only (its websockets included), no inline script.

    ``'self'`` covers websockets to the same host in current browsers; the explicit ``ws:`` and
    ``wss:`` sources are for older ones.
    """
    connect = ["'self'"]
    host = request.headers.get("host", "")
    if _HOST.match(host):
        connect += [f"ws://{host}", f"wss://{host}"]
    directives = [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        # GraphiQL's fonts and the pages' empty icons are data: URLs.
        "font-src 'self' data:",
        "img-src 'self' data:",
        f"connect-src {' '.join(connect)}",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
    return "; ".join(directives)


def page(request: Request, name: str) -> HTMLResponse:
    """One of the built HTML pages, with its security headers."""
    return HTMLResponse(
        (STATIC_DIR / name).read_text(encoding="utf-8"),
        headers={
            "Content-Security-Policy": content_security_policy(request),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


def graphiql_page(request: Request) -> HTMLResponse:
    """GraphiQL, whose scripts and styles load from ``/static``; rendered at ``GET /graphql``."""
    return page(request, "graphiql.html")


def development_routes() -> list[BaseRoute]:
    """The static files, the demo page and the demo data endpoint (development only).

    ``GET /demo/data`` makes sure the demo data exists and returns what ``gql-api demo --json``
    prints: the demo stream's id and a fresh token for each demo user.
    """

    async def demo_page(request: Request) -> Response:
        return page(request, "demo.html")

    async def demo_data(request: Request) -> JSONResponse:
        services = services_of(request)
        demo = await ensure_demo_data(services.chat)
        return JSONResponse(demo.as_json(services.authenticator), headers={"Cache-Control": "no-store"})

    return [
        Mount(STATIC_PATH, app=StaticFiles(directory=STATIC_DIR), name="static"),
        Route(DEMO_PATH, demo_page, methods=["GET"]),
        Route(f"{DEMO_PATH}/data", demo_data, methods=["GET"]),
    ]
