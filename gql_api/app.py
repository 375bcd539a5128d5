"""The application factory: one Starlette app, one lifespan owning the database and the hub."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from pymongo.asynchronous.database import AsyncDatabase
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from gql_api.auth import Authenticator
from gql_api.database import open_database
from gql_api.delivery import open_delivery
from gql_api.graphql.schema import build_schema
from gql_api.csrf import PREFLIGHT_HEADERS
from gql_api.graphql.view import GraphQLView
from gql_api.hub import MessageHub
from gql_api.logs import RequestIdMiddleware
from gql_api.metrics import Metrics, metrics_endpoint
from gql_api.pages import development_routes
from gql_api.rest import rest_routes
from gql_api.ratelimit import MessageRateLimiter
from gql_api.service import ChatService
from gql_api.settings import Settings, load_settings
from gql_api.store import ChatStore

logger = logging.getLogger(__name__)

READINESS_TIMEOUT_SECONDS = 2.0
# What a page on an allowed origin may send: GraphQL's POSTs with JSON, a token, and the
# CSRF-prevention headers (which is what makes its requests preflighted).
CORS_ALLOWED_HEADERS = ["Authorization", "Content-Type", *PREFLIGHT_HEADERS]
CORS_MAX_AGE_SECONDS = 600


StartupHook = Callable[[Starlette], Awaitable[None]]


def create_app(
    settings: Settings | None = None,
    *,
    on_startup: Sequence[StartupHook] = (),
    database: AsyncDatabase | None = None,
) -> Starlette:
    """Build the ASGI app; the database is opened when the app starts, not here.

    ``on_startup`` hooks run once the database is open, before the first request. A
    ``database`` already open (and bound to Beanie) is used as it is and left open: several
    apps in one process can share one client that way.
    """
    settings = settings or load_settings()
    store = ChatStore()  # every query; it works on whatever database the lifespan binds
    authenticator = Authenticator(settings, store)
    metrics = Metrics()  # this app's own registry: apps in one process count separately
    hub = MessageHub(store, settings.subscriber_queue_size, metrics)
    chat = ChatService(
        hub,
        MessageRateLimiter(settings.rate_limit_messages, settings.rate_limit_window_seconds, store=store),
        store=store,
    )
    graphql = GraphQLView(
        build_schema(settings, metrics),
        chat=chat,
        authenticator=authenticator,
        graphiql=not settings.production,
        connection_init_timeout=settings.ws_connection_init_timeout_seconds,
        ping_interval=settings.ws_ping_interval_seconds,
        max_subscriptions=settings.ws_max_subscriptions,
        max_body_bytes=settings.graphql_max_body_bytes,
        allowed_origins=settings.allowed_origins,
    )
    metrics.read_gauges(connections=lambda: len(graphql.connections), subscriptions=hub.subscriber_count)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            db = database if database is not None else await stack.enter_async_context(open_database(settings))
            app.state.database = db
            chat.delivery = await open_delivery(hub, db)
            stack.push_async_callback(chat.delivery.stop)
            for hook in on_startup:
                await hook(app)
            yield

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            await asyncio.wait_for(
                request.app.state.database.command("ping"), READINESS_TIMEOUT_SECONDS
            )
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
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *operations,
            Route("/graphql", graphql),
            WebSocketRoute("/graphql", graphql),
            *rest_routes(chat, authenticator),
            *([] if settings.production else development_routes(chat, authenticator)),
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
            )
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = authenticator
    app.state.hub = hub
    app.state.metrics = metrics
    app.state.chat = chat
    app.state.graphql = graphql
    return app
