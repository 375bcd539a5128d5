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
from starlette.routing import Match, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from gql_api.csrf import PREFLIGHT_HEADERS
from gql_api.database import Database
from gql_api.graphql.schema import build_schema
from gql_api.graphql.view import GraphQLView
from gql_api.logs import RequestIdMiddleware, identify, request_id
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

    A websocket on the GraphQL route goes straight to the view, past the middleware stack and
    the router: for a websocket, Starlette's error and exception middleware and CORS do nothing,
    and each of them (and the router) would keep a suspended coroutine for the connection's
    whole life, about 3 KiB per open connection. What the stack gives a websocket is given here:
    ``scope["app"]``, the router's scope keys, and the request id (``gql_api.logs.identify``).
    Every other request, and any other websocket, goes through the whole stack.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        metrics: Metrics,
        graphql: GraphQLView,
        graphql_websocket: WebSocketRoute,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.settings = settings
        self.metrics = metrics
        self.graphql = graphql
        self.graphql_websocket = graphql_websocket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        if scope["type"] == "websocket":
            match, child_scope = self.graphql_websocket.matches(scope)
            if match is Match.FULL:
                scope.update(child_scope, router=self.router, route=self.graphql_websocket)
                token, send = identify(scope, send, self.metrics.websocket_closed)
                try:
                    # Two steps, so nothing stays suspended around the handler but this.
                    handler = await self.graphql.open_websocket(scope, receive, send)
                    if handler is not None:
                        await handler.handle()
                finally:
                    request_id.reset(token)
                return
        await self.middleware_stack(scope, receive, send)


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
    graphql_websocket = WebSocketRoute("/graphql", graphql)
    return App(
        settings=settings,
        metrics=metrics,
        graphql=graphql,
        graphql_websocket=graphql_websocket,
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *operations,
            Route("/graphql", graphql),
            graphql_websocket,
            *rest_routes(metrics, max_body_bytes=settings.graphql_max_body_bytes),
            *([] if settings.production else development_routes()),
        ],
        middleware=[
            # Outermost: every log line of a request, CORS refusals included, has its id (a
            # GraphQL websocket gets it from ``App.__call__``, which serves it past this stack).
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
