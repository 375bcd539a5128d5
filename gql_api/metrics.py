"""What operators scrape: one ``Metrics`` per app, exposed at ``/metrics`` in the Prometheus format.

Each app owns its own ``CollectorRegistry`` (never prometheus_client's global one), so several
apps in one process (replicas in a test, a second app in a tool) count separately. Gauges that
the app already knows (open websockets, subscriptions) are read when scraped rather than kept
up to date on every change; counters and histograms are bumped by one call where things happen.
Every replica exposes its own numbers: Prometheus tells them apart by its ``instance`` label.
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gql_api.errors import RateLimited, Unauthenticated

PREFIX = "gql_api"
# Database round trips: a few milliseconds when healthy, up to the operation timeout when not.
SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The service's metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.websocket_connections = Gauge(
            f"{PREFIX}_websocket_connections", "Websocket connections open on this replica.", registry=r
        )
        self.subscriptions = Gauge(
            f"{PREFIX}_subscriptions", "Live subscriptions (hub subscribers) on this replica.", registry=r
        )
        self.deliveries = Counter(
            f"{PREFIX}_deliveries",
            "Messages handed to a live subscriber (one per message per subscriber).",
            registry=r,
        )
        self.slow_subscribers_dropped = Counter(
            f"{PREFIX}_slow_subscribers_dropped",
            "Subscriptions ended with SUBSCRIBER_TOO_SLOW: they fell SUBSCRIBER_QUEUE_SIZE messages behind.",
            registry=r,
        )
        self.send_seconds = Histogram(
            f"{PREFIX}_message_send_seconds",
            "Time to send a message (checks, rate limit, store), by kind and outcome.",
            ["kind", "outcome"],
            buckets=SEND_BUCKETS,
            registry=r,
        )
        self.change_stream_lag_seconds = Histogram(
            f"{PREFIX}_change_stream_lag_seconds",
            "From a message's creation to its change event reaching this replica.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.rate_limit_refusals = Counter(
            f"{PREFIX}_rate_limit_refusals", "Messages refused with RATE_LIMITED.", registry=r
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "Errors returned to clients, by error code and API (graphql, rest).",
            ["code", "api"],
            registry=r,
        )
        self.websocket_closes = Counter(
            f"{PREFIX}_websocket_closes",
            "Websockets closed by the server, by close code.",
            ["code"],
            registry=r,
        )
        # The standard process_* (CPU, memory, file descriptors), python_info and python_gc_*.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def read_gauges(self, *, connections: Callable[[], int], subscriptions: Callable[[], int]) -> None:
        """Compute the connection and subscription gauges from the app's own state at each scrape."""
        self.websocket_connections.set_function(connections)
        self.subscriptions.set_function(subscriptions)

    def error(self, code: str, api: str) -> None:
        """Count one error returned to a client."""
        self.errors.labels(code, api).inc()

    def change_event(self, created_at: datetime) -> None:
        """A message's change event arrived: record how long after its creation."""
        if created_at.tzinfo is None:  # a client without tz_aware reads UTC as naive
            created_at = created_at.replace(tzinfo=UTC)
        # Another replica's clock may run ahead of ours: a negative lag is no lag.
        self.change_stream_lag_seconds.observe(max(0.0, (datetime.now(UTC) - created_at).total_seconds()))

    def websocket_closed(self, code: int) -> None:
        """Count a close frame the server sent."""
        self.websocket_closes.labels(str(code)).inc()


class _HasMetrics(Protocol):
    metrics: Metrics


P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound=_HasMetrics)


Method = Callable[Concatenate[S, P], Awaitable[T]]


def timed_send(kind: str) -> Callable[[Method[S, P, T]], Method[S, P, T]]:
    """Time a send method of an object with ``metrics``, by outcome; count its rate-limit refusals."""

    def decorate(method: Method[S, P, T]) -> Method[S, P, T]:
        @functools.wraps(method)
        # `self` positional-only, as Concatenate makes it: else `wraps` no longer matches `Method`.
        async def timed(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            outcome = "error"
            try:
                result = await method(self, *args, **kwargs)
                outcome = "ok"
                return result
            except RateLimited:
                self.metrics.rate_limit_refusals.inc()
                raise
            finally:
                self.metrics.send_seconds.labels(kind, outcome).observe(time.perf_counter() - started)

        return timed

    return decorate


def metrics_endpoint(metrics: Metrics, token: SecretStr | None = None) -> Callable[[Request], Awaitable[Response]]:
    """The ``/metrics`` route: the registry in the format the scraper asks for (Prometheus text,
    or OpenMetrics); with ``token``, only for ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token.get_secret_value()}".encode() if token is not None else None

    async def scrape(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                error = Unauthenticated(
                    "Authentication required: /metrics needs `Authorization: Bearer <METRICS_TOKEN>`"
                )
                return JSONResponse(
                    {"errors": [{"message": error.message, "extensions": error.extensions}]},
                    status_code=error.status_code,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(metrics.registry), headers={"Content-Type": content_type})

    return scrape
