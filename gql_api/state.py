"""What a running app is made of: the services its lifespan builds once the database is open.

``create_app`` builds only what needs no database (the routes, the GraphQL schema, the metrics
registry). Its lifespan opens the database and builds every service on it, complete, in
``open_services``; Starlette then hands them to each request and websocket as its lifespan
state (``request.state["services"]``), read through ``services_of``. Nothing is built half-way
and patched later, and an app served without its lifespan fails loudly instead of running on
stand-ins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypedDict

from starlette.requests import HTTPConnection

from gql_api.auth import Authenticator
from gql_api.database import Database, open_database
from gql_api.delivery import Delivery, open_delivery
from gql_api.documents import ChatMessage
from gql_api.hub import MessageHub
from gql_api.metrics import Metrics
from gql_api.ratelimit import MessageRateLimiter
from gql_api.service import ChatService
from gql_api.settings import Settings
from gql_api.store import ChatStore
from gql_api.users import UserCache
from gql_api.viewers import ReplicaPresence, ViewerCounts


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a request may use, for as long as the app runs."""

    settings: Settings
    database: Database
    metrics: Metrics
    store: ChatStore
    hub: MessageHub[ChatMessage]
    delivery: Delivery
    rate_limiter: MessageRateLimiter
    chat: ChatService
    authenticator: Authenticator
    viewers: ViewerCounts
    presence: ReplicaPresence


class AppState(TypedDict):
    """The app's lifespan state: Starlette copies it into every request's ``state``."""

    services: Services


@asynccontextmanager
async def open_services(
    settings: Settings, metrics: Metrics, *, database: Database | None = None
) -> AsyncIterator[Services]:
    """Open the database (unless one is given, already open), start live delivery and this
    replica's viewer presence on it, and build the services; on exit stop presence (deleting
    it) and delivery, then close what was opened here."""
    async with AsyncExitStack() as stack:
        if database is None:
            database = await stack.enter_async_context(open_database(settings))
        store = ChatStore()  # every query, on the database just opened (Beanie's binding)
        hub = MessageHub(store, settings.subscriber_queue_size, metrics)
        users = UserCache()  # served only while a change stream on the users keeps it fresh
        delivery = await open_delivery(hub, database, users)
        stack.push_async_callback(delivery.stop)
        rate_limiter = MessageRateLimiter(settings.rate_limit_messages, settings.rate_limit_window_seconds)
        viewers = ViewerCounts()
        presence = ReplicaPresence(store, hub, viewers, interval_seconds=settings.viewer_count_interval_seconds)
        presence.start()
        stack.push_async_callback(presence.stop)  # before delivery stops: it deletes this replica's presence
        yield Services(
            settings=settings,
            database=database,
            metrics=metrics,
            store=store,
            hub=hub,
            delivery=delivery,
            rate_limiter=rate_limiter,
            chat=ChatService(hub, delivery, rate_limiter, store=store),
            authenticator=Authenticator(settings, store, users),
            viewers=viewers,
            presence=presence,
        )


def services_of(connection: HTTPConnection[Any]) -> Services:
    """The services of the app serving this request or websocket.

    Raises RuntimeError when the server did not run the app's lifespan (uvicorn's
    ``--lifespan off``): there is no database then, and nothing to serve with.
    """
    try:
        services: Services = connection.state["services"]
    except KeyError:
        raise RuntimeError("The app's lifespan has not run: serve it with lifespan events on") from None
    return services
