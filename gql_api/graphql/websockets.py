"""Websocket connections: both subprotocols' handlers, bound for shared rendering and supervised.

A connection whose token expires is closed with 4403 at that moment; a graphql-transport-ws
connection that stops answering pings is closed with 4499; a ``connection_init`` that fails for a
reason not the client's (the database is down) closes with 1013; on shutdown every connection is
closed with 1001 so clients reconnect to another replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocketDisconnect
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import PongMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types.unset import UnsetType

from gql_api.errors import as_api_error
from gql_api.graphql.context import Context
from gql_api.graphql.fanout import bind_sink

if TYPE_CHECKING:
    from gql_api.graphql.view import GraphQLView

logger = logging.getLogger(__name__)

AUTH_REJECTED_CLOSE_CODE = 4403
PONG_MISSING_CLOSE_CODE = 4499
GOING_AWAY_CLOSE_CODE = 1001
TRY_AGAIN_LATER_CLOSE_CODE = 1013


def _text_sender(websocket: Any) -> Callable[[str], Awaitable[None]]:
    async def send_text(text: str) -> None:
        try:
            await websocket.ws.send_text(text)
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:  # the peer is gone
            raise WebSocketDisconnected from exc

    return send_text


class _Supervised:
    """What both protocol handlers share: registration with the view, token expiry, closing."""

    view: GraphQLView
    context: Context
    websocket: Any

    _expiry: asyncio.TimerHandle | None = None
    _closing: asyncio.Task[None] | None = None

    async def supervised(self, handle: Callable[[], Awaitable[None]]) -> None:
        self.view.connections.add(self)
        try:
            await handle()
        finally:
            self.view.connections.discard(self)
            if self._expiry is not None:
                self._expiry.cancel()

    def watch_expiry(self) -> None:
        """Once authenticated, close the connection when its token expires."""
        expires_at = self.context.token_expires_at
        if expires_at is None:
            return
        delay = max(0.0, (expires_at - datetime.now(UTC)).total_seconds())
        self._expiry = asyncio.get_running_loop().call_later(
            delay, self.close_soon, AUTH_REJECTED_CLOSE_CODE, "Token expired"
        )

    def close_soon(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self.close(code, reason))

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.websocket.close(code=code, reason=reason)
        except (RuntimeError, WebSocketDisconnect):
            pass  # already closed by the peer

    def ping(self) -> None:
        """One keep-alive round; only graphql-transport-ws has pings with answers."""

    async def init_failed(self, exc: Exception) -> None:
        """``connection_init`` failed, not for the client's fault (the database is down):
        close with 1013, "try again later", rather than 4403 or a crash."""
        error = as_api_error(exc)
        logger.warning("Websocket connection refused: %s (%r)", error.code, exc)
        await self.close(TRY_AGAIN_LATER_CLOSE_CODE, error.message[:120])


class GraphQLTransportWSHandler(_Supervised, BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws: supervised, with each subscription bound to its socket for
    shared rendering."""

    _awaiting_pong = False

    async def handle(self) -> None:
        await self.supervised(super().handle)

    async def handle_connection_init(self, message: Any) -> None:
        try:
            await super().handle_connection_init(message)
        except Exception as exc:
            await self.init_failed(exc)
            return
        if self.connection_acknowledged:
            self.watch_expiry()

    async def handle_pong(self, message: PongMessage) -> None:
        self._awaiting_pong = False

    def ping(self) -> None:
        if not self.connection_acknowledged or self._closing is not None:
            return
        if self._awaiting_pong:
            self.close_soon(PONG_MISSING_CLOSE_CODE, "No pong: connection timed out")
            return
        self._awaiting_pong = True
        asyncio.create_task(self._send_ping())

    async def _send_ping(self) -> None:
        try:
            await self.send_message({"type": "ping"})
        except (WebSocketDisconnected, RuntimeError):
            pass

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        bind_sink(
            _text_sender(self.websocket),
            operation_id=operation.id,
            frame_type="next",
            query=operation.query,
            operation_name=operation.operation_name,
            variables=operation.variables,
        )
        await super().run_operation(operation)


class LegacyGraphQLWSHandler(_Supervised, BaseGraphQLWSHandler[Context, None]):
    """The legacy graphql-ws protocol: supervised, shared rendering, and a rejected connection
    closed with 4403 like the new protocol does."""

    async def handle(self) -> None:
        await self.supervised(super().handle)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload")
        if payload is not None and not isinstance(payload, dict):
            await self.send_message({"type": "connection_error"})
            await self.websocket.close(code=1000, reason="")
            return
        self.context.connection_params = payload
        try:
            ack_payload = await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError as exc:
            await self.send_message({"type": "connection_error", "payload": exc.payload})
            await self.websocket.close(code=AUTH_REJECTED_CLOSE_CODE, reason="Forbidden")
            return
        except Exception as exc:
            await self.init_failed(exc)
            return
        if isinstance(ack_payload, UnsetType) or ack_payload is None:
            await self.send_message({"type": "connection_ack"})
        else:
            await self.send_message({"type": "connection_ack", "payload": ack_payload})
        self.connection_acknowledged = True
        self.watch_expiry()
        if self.keep_alive:
            self.keep_alive_task = asyncio.create_task(self.handle_keep_alive())

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        bind_sink(
            _text_sender(self.websocket),
            operation_id=operation_id,
            frame_type="data",
            query=query,
            operation_name=operation_name,
            variables=variables,
        )
        await super().handle_async_results(operation_id, query, operation_name, variables)


class Connections:
    """The open websocket connections of one view, pinged from one task rather than one each."""

    def __init__(self, ping_interval: float) -> None:
        self._ping_interval = ping_interval
        self._open: set[_Supervised] = set()
        self._pinger: asyncio.Task[None] | None = None
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, connection: _Supervised) -> None:
        self._open.add(connection)
        self._empty.clear()
        if self._pinger is None or self._pinger.done():
            self._pinger = asyncio.create_task(self._ping_forever(), name="ws-pinger")

    def discard(self, connection: _Supervised) -> None:
        self._open.discard(connection)
        if not self._open:
            self._empty.set()

    async def drained(self) -> None:
        """Return once no connection is open (for tests and shutdown)."""
        await self._empty.wait()

    async def close_all(self, code: int, reason: str) -> None:
        """Close every connection (on shutdown: 1001, so clients reconnect elsewhere)."""
        if self._pinger is not None:
            self._pinger.cancel()
        await asyncio.gather(*(c.close(code, reason) for c in tuple(self._open)))

    async def _ping_forever(self) -> None:
        # A peer that has not answered the previous round's ping by the next round is closed.
        while self._open:
            await asyncio.sleep(self._ping_interval)
            for connection in tuple(self._open):
                connection.ping()
