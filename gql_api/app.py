"""The application factory: one Starlette app, one lifespan owning the database and the services on it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from gql_api.csrf import PREFLIGHT_HEADERS
from gql_api.database import Database
from gql_api.graphql.schema import build_schema
from gql_api.graphql.view import GraphQLView
from gql_api.logs import RequestIdMiddleware
from gql_api.metrics import Metrics, metrics_endpoint
from gql_api.pages import development_routes
from gql_api.rest import rest_routes
from gql_api.settings import Settings, load_settings
from gql_api.state import AppState, Services, open_services, services_of

logger = logging.getLogger(__name__)

READINESS_TIMEOUT_SECONDS = 2.0
# What a page on an allowed origin may send: GraphQL's POSTs with JSON, a token, and the
# CSRF-prevention headers (which is what makes its requests preflighted).
CORS_ALLOWED_HEADERS = ["Authorization", "Content-Type", *PREFLIGHT_HEADERS]
CORS_MAX_AGE_SECONDS = 600


StartupHook = Callable[[Services], Awaitable[None]]


class App(Starlette):
    """The app ``create_app`` builds, with what it was built from, typed.

    Its services exist only while it runs: they are its lifespan state, which Starlette gives
    each request (see ``gql_api.state``).
    """

    def __init__(self, *, settings: Settings, metrics: Metrics, graphql: GraphQLView, **options: Any) -> None:
        super().__init__(**options)
        self.settings = settings
        self.metrics = metrics
        self.graphql = graphql


def create_app(
    settings: Settings | None = None,
    *,
    on_startup: Sequence[StartupHook] = (),
    database: Database | None = None,
) -> App:
    """Build the ASGI app; the database and the services on it are built when the app starts.

    ``on_startup`` hooks get the services once they are built, before the first request. A
    ``database`` already open (and bound to Beanie) is used as it is and left open: several
    apps in one process can share one client that way.
    """
    settings = settings or load_settings()
    metrics = Metrics()  # this app's own registry: apps in one process count separately
    graphql = GraphQLView(
        build_schema(settings, metrics),
        metrics=metrics,
        graphiql=not settings.production,
        connection_init_timeout=settings.ws_connection_init_timeout_seconds,
        ping_interval=settings.ws_ping_interval_seconds,
        max_subscriptions=settings.ws_max_subscriptions,
        max_body_bytes=settings.graphql_max_body_bytes,
        allowed_origins=settings.allowed_origins,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[AppState]:
        async with open_services(settings, metrics, database=database) as services:
            metrics.read_gauges(
                connections=lambda: len(graphql.connections), subscriptions=services.hub.subscriber_count
            )
            for hook in on_startup:
                await hook(services)
            yield {"services": services}

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            await asyncio.wait_for(services_of(request).database.command("ping"), READINESS_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            logger.warning("Readiness check failed: %r", exc)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    # Not for the public: operators scrape it over an internal network, or with METRICS_TOKEN.
    operations = (
        [Route("/metrics", metrics_endpoint(metrics, settings.metrics_token), methods=["GET"])]
        if settings.metrics_enabled
        else []
    )
    return App(
        settings=settings,
        metrics=metrics,
        graphql=graphql,
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *operations,
            Route("/graphql", graphql),
            WebSocketRoute("/graphql", graphql),
            *rest_routes(metrics, max_body_bytes=settings.graphql_max_body_bytes),
            *([] if settings.production else development_routes()),
        ],
        middleware=[
            # Outermost: every log line of a request, CORS refusals included, has its id.
            Middleware(RequestIdMiddleware, on_websocket_close=metrics.websocket_closed),
            # One list of origins for CORS and the websocket Origin check (in the view).
            Middleware(
                CORSMiddleware,
                allow_origins=settings.allowed_origins,
                allow_methods=["GET", "POST"],
                allow_headers=CORS_ALLOWED_HEADERS,
                max_age=CORS_MAX_AGE_SECONDS,
            ),
        ],
        lifespan=lifespan,
    )
