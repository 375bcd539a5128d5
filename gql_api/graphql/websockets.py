"""Websocket connections: both subprotocols' handlers, bound for shared rendering and supervised.

Both subprotocols keep the same promises (Strawberry's legacy graphql-ws handler keeps few):
a frame over the request body cap closes with 1009; a frame that is binary, not JSON, not an
object, of an unknown type or with fields of the wrong type closes with 4400 (one log line, no
traceback); no ``connection_init`` in time closes with 4408, a second one with 4429; an operation
before ``connection_ack`` closes with 4401, a duplicate operation id with 4409. A refused token
closes with 4403 and a reason saying what was wrong with it (missing, not valid, expired, unknown
user), not Strawberry's bare "Forbidden"; a connection whose token expires is closed with 4403 at
that moment; a graphql-transport-ws connection that stops
answering pings is closed with 4499; a ``connection_init`` that fails for a reason not the
client's (the database is down) closes with 1013; on shutdown every connection is closed with
1001 so clients reconnect to another replica.

An idle connection holds as little as it can (README, "Where the memory goes"): one coroutine
waiting in the server's receive, no timer or task of its own, and, once acknowledged, neither the
handshake's headers nor ``connection_init``'s payload (``context.request.headers`` and
``context.connection_params`` are empty from then on).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from json import JSONDecodeError
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from graphql import GraphQLError, GraphQLFormattedError
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
    _OperationStreamClosed,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    CompleteMessage,
    ErrorMessage,
    PongMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionErrorMessage,
    ConnectionInitMessage,
    StartMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.types import ErrorMessage as LegacyErrorMessage
from strawberry.types.execution import ExecutionResult
from strawberry.types.unset import UnsetType
from strawberry.utils.aio import aclosing

from gql_api.errors import BadUserInput, report
from gql_api.graphql.context import Context
from gql_api.graphql.fanout import bind_sink
from gql_api.wsprotocol import SEND_TEXT_EXTENSION, TRY_SEND_TEXT_EXTENSION

if TYPE_CHECKING:
    from gql_api.graphql.view import GraphQLView

logger = logging.getLogger(__name__)

AUTH_REJECTED_CLOSE_CODE = 4403
PONG_MISSING_CLOSE_CODE = 4499
GOING_AWAY_CLOSE_CODE = 1001
TRY_AGAIN_LATER_CLOSE_CODE = 1013
#: RFC 6455's "message too big": what uvicorn's own ``ws_max_size`` check closes with too.
MESSAGE_TOO_BIG_CLOSE_CODE = 1009
BAD_MESSAGE_CLOSE_CODE = 4400
INIT_TIMEOUT_CLOSE_CODE = 4408
DUPLICATE_ID_CLOSE_CODE = 4409
SECOND_INIT_CLOSE_CODE = 4429

#: A graphql-transport-ws ping, as Strawberry's ``send_message`` encodes it.
PING_TEXT = '{"type":"ping"}'

#: What a message of each type carries beyond its ``type``: nothing checked, an operation ``id``,
#: or an ``id`` and a payload holding an operation.
Shape = Literal["plain", "id", "operation"]
_OPTIONAL_OPERATION_FIELDS: tuple[tuple[str, type, str], ...] = (
    ("variables", dict, "an object"),
    ("operationName", str, "a string"),
    ("extensions", dict, "an object"),
)


def message_problem(message: object, shapes: Mapping[str, Shape]) -> str | None:
    """Why ``message`` is not a well-formed message of the protocol whose types are ``shapes``,
    or None. Checked before Strawberry dispatches it, which assumes every field's type."""
    if not isinstance(message, dict):
        return "Message must be a JSON object"
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in shapes:
        return "Unknown message type"
    payload = message.get("payload")
    if payload is not None and not isinstance(payload, dict):
        return "Message payload must be an object"
    shape = shapes[kind]
    if shape != "plain" and not isinstance(message.get("id"), str):
        return "Operation id must be a string"
    if shape == "operation":
        if payload is None or not isinstance(payload.get("query"), str):
            return "Operation payload must hold a query string"
        for field, expected, described in _OPTIONAL_OPERATION_FIELDS:
            value = payload.get(field)
            if value is not None and not isinstance(value, expected):
                return f"Operation {field} must be {described}"
    return None


def _over(text: str, max_bytes: int) -> bool:
    """Whether ``text`` is more than ``max_bytes`` in UTF-8, as the HTTP cap counts bytes."""
    # A character is one to four bytes: encode only when the length alone cannot tell.
    if len(text) > max_bytes:
        return True
    if len(text) * 4 <= max_bytes:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > max_bytes


def _short(reason: str) -> str:
    # A close reason may be 123 bytes at most (RFC 6455), and may quote what the client sent.
    return reason.encode()[:120].decode(errors="ignore")


async def _refuse(websocket: Any, code: int, reason: str) -> None:
    """Close for the client's fault: one short log line, never a traceback."""
    reason = _short(reason)
    logger.info("Websocket closed with %d: %s", code, reason)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # already closed by the peer
        await websocket.close(code=code, reason=reason)


#: What ``CappedWebSocketAdapter.message_in`` returns once the connection is over.
CLOSED: Final = object()


class CappedWebSocketAdapter(ASGIWebSocketAdapter):
    """Strawberry's ASGI adapter, reading frames under the view's body cap (``max_body_bytes``,
    the same as HTTP bodies, whatever server runs the app): a larger one closes with 1009; a
    binary frame or one that is not JSON closes with 4400 on both subprotocols (Strawberry's
    graphql-ws handler asks for bad JSON to be skipped, ``ignore_parsing_errors``: it is not)."""

    def __init__(self, view: Any, request: WebSocket, response: WebSocket) -> None:
        super().__init__(view, request, response)
        extensions = response.scope.get("extensions") or {}
        self._direct: Callable[[str], Awaitable[None]] | None = extensions.get(SEND_TEXT_EXTENSION)
        #: ``send_text``'s frame written at once, or False when that would wait (or the
        #: connection is not open): for the hub's one-pass delivery. None on a server without
        #: it. The server's own, as it is: an app that closed the websocket has sent its close
        #: frame, and a peer that went away has disconnected the protocol.
        self.send_now: Callable[[str], bool] | None = extensions.get(TRY_SEND_TEXT_EXTENSION)

    @property
    def connected(self) -> bool:
        """Whether the connection may still receive: not closed, by either side."""
        return self.ws.application_state != WebSocketState.DISCONNECTED

    def receive(self) -> Awaitable[Message]:
        """The next frame, as the server gives it (a disconnect included). Starlette's own
        awaitable: an idle connection waits in it, with no coroutine of ours around it."""
        return self.ws.receive()

    async def iter_json(self, *, ignore_parsing_errors: bool = False) -> AsyncGenerator[object, None]:
        while self.connected:
            message = await self.message_in(await self.receive())
            if message is CLOSED:
                return
            yield message
            del message

    async def message_in(self, frame: Message) -> object:
        """The JSON message ``frame`` holds, or ``CLOSED``: the peer has gone, or the frame is
        refused and the connection closed (too big: 1009; not text, not JSON: 4400)."""
        if frame["type"] == "websocket.disconnect":
            return CLOSED
        text = frame.get("text")
        if text is None:
            await _refuse(self, BAD_MESSAGE_CLOSE_CODE, "WebSocket message type must be text")
            return CLOSED
        max_bytes: int = self.view.max_body_bytes  # type: ignore[attr-defined]
        if _over(text, max_bytes):
            await _refuse(self, MESSAGE_TOO_BIG_CLOSE_CODE, f"Message too big: at most {max_bytes} bytes")
            return CLOSED
        try:
            return self.view.decode_json(text)
        except (JSONDecodeError, ValueError, RecursionError):  # deep nesting: still bad JSON
            await _refuse(self, BAD_MESSAGE_CLOSE_CODE, "WebSocket message must be valid JSON")
            return CLOSED

    async def send_text(self, text: str) -> None:
        """Send a text frame; ``WebSocketDisconnected`` when the peer is gone."""
        ws = self.ws
        direct = self._direct
        if direct is None:
            try:
                await ws.send_text(text)
            except (WebSocketDisconnect, OSError, RuntimeError) as exc:  # the peer is gone
                raise WebSocketDisconnected from exc
            return
        # `gql-api serve`'s server: each frame straight to the connection, past the middleware
        # (which has nothing to do with a message frame), with Starlette's own checks.
        if ws.application_state != WebSocketState.CONNECTED:
            raise WebSocketDisconnected
        try:
            await direct(text)
        except OSError as exc:  # the peer is gone (uvicorn's ClientDisconnected)
            ws.application_state = WebSocketState.DISCONNECTED
            raise WebSocketDisconnected from exc
        except RuntimeError as exc:
            raise WebSocketDisconnected from exc

    async def close(self, code: int, reason: str) -> None:
        # Strawberry's reasons quote the client (an operation id, a syntax error's token): a long
        # one would make the close itself fail.
        await super().close(code, _short(reason))


#: The close reason when the view refuses a connection without saying why.
DEFAULT_REJECTION_REASON = "Forbidden"
#: The close reason when a token expires while its connection is open: what a token already
#: expired at ``connection_init`` is refused with, so a client matches one reason.
TOKEN_EXPIRED_REASON = "Authentication required: the token has expired"


def rejection_reason(payload: object) -> str:
    """The close reason for a refused ``connection_init``: the rejection's message, which says
    what was wrong with the token, so a client can tell "expired" (renew, reconnect) from the rest."""
    if isinstance(payload, dict) and isinstance(payload.get("message"), str) and payload["message"]:
        return _short(payload["message"])
    return DEFAULT_REJECTION_REASON


def _share_query(message: Any) -> None:
    # A subscription keeps its query text for its whole life, and clients send the same few:
    # one string for all of theirs (an interned string is freed with its last user).
    payload = message["payload"]
    payload["query"] = sys.intern(payload["query"])


class _Supervised:
    """What both protocol handlers share: registration with the view, message checks, token
    expiry, closing, background tasks."""

    #: The view, as ours: Strawberry's handlers type their own ``view`` as any async view.
    api_view: GraphQLView
    context: Context
    websocket: Any
    max_subscriptions_per_connection: int | None
    #: The protocol's message types and what each carries.
    shapes: ClassVar[Mapping[str, Shape]]

    def __init__(self, view: GraphQLView, *args: Any, **kwargs: Any) -> None:
        # A mixin: the next __init__ in the MRO is Strawberry's handler's, which takes the view.
        super().__init__(view, *args, **kwargs)  # type: ignore[call-arg]
        # Every attribute is set here, once: one first set later (at the first ping, say) turns
        # the instance's compact attribute storage into a dict, 1.1 KiB more per connection.
        self._expiry: Expiry | None = None
        self._closing: asyncio.Task[None] | None = None
        self._awaiting_pong = False
        self._init_received = False
        self._init_timer: asyncio.TimerHandle | None = None
        self.api_view = view

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, keeping a reference so it is not collected mid-way."""
        self.api_view.connections.spawn(work)

    def start_init_timer(self) -> None:
        """Close with 4408 unless ``connection_init`` arrives in time.

        A timer, not a task: Strawberry's graphql-transport-ws handler waits in a task of its
        own, which then stays with the connection for its whole life, cancelled, with its
        traceback (about 1 KiB).
        """
        timeout = self.api_view.connection_init_wait_timeout.total_seconds()
        self._init_timer = asyncio.get_running_loop().call_later(timeout, self._init_timed_out)

    def stop_init_timer(self) -> None:
        if self._init_timer is not None:
            self._init_timer.cancel()
            self._init_timer = None

    def _init_timed_out(self) -> None:
        self._init_timer = None
        self.close_soon(INIT_TIMEOUT_CLOSE_CODE, "Connection initialisation timeout")

    async def handle_message(self, message: Any) -> None:
        """Strawberry's dispatch, for well-formed messages only; anything else closes with 4400."""
        problem = message_problem(message, self.shapes)
        if problem is not None:
            await _refuse(self.websocket, BAD_MESSAGE_CLOSE_CODE, problem)
            return
        await super().handle_message(message)  # type: ignore[misc]

    def over_limit(self, running: int) -> bool:
        limit = self.max_subscriptions_per_connection
        return limit is not None and running >= limit

    def limit_error(self) -> GraphQLFormattedError:
        """The error for an operation over ``WS_MAX_SUBSCRIPTIONS``, with its code."""
        limit = self.max_subscriptions_per_connection
        error = BadUserInput(f"Subscription limit reached: at most {limit} operations per connection")
        return {"message": error.message, "extensions": error.extensions}

    async def handle(self) -> None:
        """The connection's life: Strawberry's loop, supervised, in one coroutine.

        Strawberry's ``handle``, the adapter's ``iter_json`` and a supervising wrapper would be
        three more coroutines suspended for the connection's whole life, and its loop keeps the
        last message (an idle subscription's ``subscribe``, with its query) while it waits for
        the next. The adapter closes on a frame that is not text or JSON itself: Strawberry's
        handling of those has nothing to catch here.
        """
        websocket: CappedWebSocketAdapter = self.websocket
        connections = self.api_view.connections
        connections.add(self)
        self.start_init_timer()
        try:
            try:
                while websocket.connected:
                    # An idle connection waits here, in the server's receive itself: no
                    # generator around it, no reference to the last message.
                    message = await websocket.message_in(await websocket.receive())
                    if message is CLOSED:
                        break
                    await self.handle_message(message)
                    del message
            except WebSocketDisconnected:
                pass
            finally:
                await self.wind_down()
        finally:
            connections.discard(self)
            self.stop_init_timer()
            if self._expiry is not None:
                connections.forget_expiry(self._expiry)

    async def wind_down(self) -> None:
        """Stop the connection's operations once it is over (what ends Strawberry's ``handle``)."""
        raise NotImplementedError

    async def acknowledge(self) -> bool:
        """Authenticate the connection (the view's ``on_ws_connect``) and send ``connection_ack``.

        A refused token closes with 4403 and the refusal's message as the reason (graphql-ws
        first gets it in a ``connection_error`` message); a failure that is not the client's
        closes with 1013. Returns whether the connection was acknowledged.
        """
        try:
            ack_payload = await self.api_view.on_ws_connect(self.context)
        except ConnectionRejectionError as exc:
            await self.rejected(exc.payload)
            reason = rejection_reason(exc.payload)
            logger.info("Websocket closed with %d: %s", AUTH_REJECTED_CLOSE_CODE, reason)
            await self.close(AUTH_REJECTED_CLOSE_CODE, reason)
            return False
        except Exception as exc:  # noqa: BLE001 - not the client's fault: closed with 1013, reported
            await self.init_failed(exc)
            return False
        if isinstance(ack_payload, UnsetType) or ack_payload is None:
            await self.send_message({"type": "connection_ack"})  # type: ignore[attr-defined]
        else:
            await self.send_message({"type": "connection_ack", "payload": ack_payload})  # type: ignore[attr-defined]
        self.connection_acknowledged = True
        self.watch_expiry()
        # The handshake's headers (the Origin check, the request id, the refusal's reason) and
        # connection_init's payload (the token) are what the connection was accepted on: nothing
        # reads them once it is, and it would keep them for its whole life (1 KiB and more from
        # a browser). Starlette's ``headers``, made once per request, views the scope's own list.
        request = self.context.request
        if request.headers:
            request.scope["headers"].clear()
        self.context.connection_params = None
        return True

    async def rejected(self, payload: dict[str, object]) -> None:
        """Tell the client its connection is refused, before the 4403 close (protocol-specific)."""

    def watch_expiry(self) -> None:
        """Once authenticated, close the connection when its token expires."""
        expires_at = self.context.token_expires_at
        if expires_at is None:
            return
        delay = max(0.0, (expires_at - datetime.now(UTC)).total_seconds())
        self._expiry = self.api_view.connections.expire(self, delay)

    def expired(self) -> None:
        """Its token has expired: close with 4403."""
        self._expiry = None
        self.close_soon(AUTH_REJECTED_CLOSE_CODE, TOKEN_EXPIRED_REASON)

    def close_soon(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self.close(code, reason))

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # already closed by the peer
            await self.websocket.close(code=code, reason=reason)

    def ping(self) -> None:
        """One keep-alive round; only graphql-transport-ws has pings with answers."""

    async def init_failed(self, exc: Exception) -> None:
        """``connection_init`` failed, not for the client's fault (the database is down):
        close with 1013, "try again later", rather than 4403 or a crash."""
        error = report(exc, "a websocket's connection_init")
        await self.close(TRY_AGAIN_LATER_CLOSE_CODE, error.message[:120])


class GraphQLTransportWSHandler(_Supervised, BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws: supervised, with each subscription bound to its socket for
    shared rendering."""

    shapes: ClassVar[Mapping[str, Shape]] = {
        "connection_init": "plain",
        "ping": "plain",
        "pong": "plain",
        "subscribe": "operation",
        "complete": "id",
    }

    async def wind_down(self) -> None:
        await self.shutdown()

    async def handle_subscribe(self, message: Any) -> None:
        # Strawberry's own limit error has no code; its 4401 and 4409 checks come first.
        _share_query(message)
        operation_id = message["id"]
        running = len(self.operations)
        if self.connection_acknowledged and operation_id not in self.operations and self.over_limit(running):
            await self.send_message(ErrorMessage(id=operation_id, type="error", payload=[self.limit_error()]))
            return
        await super().handle_subscribe(message)

    async def handle_connection_init(self, message: Any) -> None:
        # Strawberry's own, but a refused token closes with a reason that says what was wrong
        # (Strawberry's is always "Forbidden"), and a failure not the client's with 1013.
        if self._closing is not None:
            return  # timed out meanwhile
        self.stop_init_timer()
        payload = message.get("payload", {})
        if not isinstance(payload, dict):
            await _refuse(self.websocket, BAD_MESSAGE_CLOSE_CODE, "Invalid connection init payload")
            return
        if self.connection_init_received:
            await _refuse(self.websocket, SECOND_INIT_CLOSE_CODE, "Too many initialisation requests")
            return
        self.connection_init_received = True
        self.context.connection_params = payload
        await self.acknowledge()

    async def handle_pong(self, message: PongMessage) -> None:
        self._awaiting_pong = False

    def ping(self) -> None:
        if not self.connection_acknowledged or self._closing is not None:
            return
        if self._awaiting_pong:
            self.close_soon(PONG_MISSING_CLOSE_CODE, "No pong: connection timed out")
            return
        self._awaiting_pong = True
        # Written at once when the server can (the same frame for every connection): a task
        # per connection per round only for those that would have to wait.
        send_now = self.websocket.send_now
        if send_now is not None and send_now(PING_TEXT):
            return
        self.spawn(self._send_ping())

    async def _send_ping(self) -> None:
        with contextlib.suppress(WebSocketDisconnected, RuntimeError):
            await self.send_message({"type": "ping"})

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        sink = bind_sink(
            self.websocket.send_text,
            operation_id=operation.id,
            frame_type="next",
            query=operation.query,
            operation_name=operation.operation_name,
            variables=operation.variables,
            handoff=True,
            send_now=self.websocket.send_now,
        )
        # Strawberry's ``run_operation``, with the live phase after its stream rather than
        # inside it: the finished stream (an async generator, its ``aclosing`` wrapper, the
        # loop's record of it) and Strawberry's frame would stay for the subscription's whole
        # life, about 1.2 KiB.
        try:
            result_source = await self.schema.stream(
                operation.query,
                variable_values=operation.variables,
                context_value=self.context,
                root_value=self.root_value,
                operation_name=operation.operation_name,
            )
            async with aclosing(result_source):
                # Ends as soon as a fanned-out resolver has started (see fanout.py): its
                # execution context, extensions and graphql-core executor are freed.
                await self._send_result_stream(operation, result_source)
            del result_source
            if sink.live is not None:
                live, sink.live = sink.live, None
                try:
                    await live()
                except Exception as exc:  # noqa: BLE001 - reported to the client, as Strawberry does
                    # What Strawberry's stream makes of an exception from a subscription's
                    # events: a `next` without data, its error classified (and counted) by the
                    # schema, then `complete`.
                    error = GraphQLError(str(exc), original_error=exc)
                    self.schema._process_errors([error])
                    await operation.send_next(ExecutionResult(data=None, errors=[error]))
            await operation.send_operation_message(CompleteMessage(id=operation.id, type="complete"))
        except _OperationStreamClosed:
            return
        except Exception as error:  # as Strawberry's: reported, completed, forgotten, raised
            await self.handle_task_exception(error)
            with contextlib.suppress(Exception):
                await operation.send_operation_message({"id": operation.id, "type": "complete"})
            self.operations.pop(operation.id, None)
            raise


class LegacyGraphQLWSHandler(_Supervised, BaseGraphQLWSHandler[Context, None]):
    """The legacy graphql-ws protocol: supervised, shared rendering, and the same promises as
    graphql-transport-ws (init timeout 4408, second init 4429, duplicate id 4409, a rejected
    connection 4403), which Strawberry's handler does not keep."""

    shapes: ClassVar[Mapping[str, Shape]] = {
        "connection_init": "plain",
        "connection_terminate": "plain",
        "start": "operation",
        "stop": "id",
    }

    async def wind_down(self) -> None:
        if self.keep_alive_task:
            self.keep_alive_task.cancel()
            with contextlib.suppress(BaseException):
                await self.keep_alive_task
        await self.cleanup()

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        if self._closing is not None:
            return  # timed out meanwhile
        if self._init_received:
            await _refuse(self.websocket, SECOND_INIT_CLOSE_CODE, "Too many initialisation requests")
            return
        self._init_received = True
        self.stop_init_timer()
        self.context.connection_params = message.get("payload")
        if not await self.acknowledge():
            return
        if self.keep_alive:
            self.keep_alive_task = asyncio.create_task(self.handle_keep_alive())

    async def rejected(self, payload: dict[str, object]) -> None:
        await self.send_message(ConnectionErrorMessage(type="connection_error", payload=payload))

    async def handle_start(self, message: StartMessage) -> None:
        # Strawberry replaces a running operation of the same id and its limit error has no code.
        _share_query(message)
        operation_id = message["id"]
        if self.connection_acknowledged:
            if operation_id in self.tasks:
                reason = f"Subscriber for {operation_id} already exists"
                await _refuse(self.websocket, DUPLICATE_ID_CLOSE_CODE, reason)
                return
            if self.over_limit(len(self.tasks)):
                error = LegacyErrorMessage(type="error", id=operation_id, payload=self.limit_error())
                await self.send_message(error)
                return
        await super().handle_start(message)

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        bind_sink(
            self.websocket.send_text,
            operation_id=operation_id,
            frame_type="data",
            query=query,
            operation_name=operation_name,
            variables=variables,
            send_now=self.websocket.send_now,
        )
        await super().handle_async_results(operation_id, query, operation_name, variables)


#: A connection's token expiry, in ``Connections``' heap: when (the loop's clock), a sequence
#: number (the order among equal times), the connection (None once forgotten).
Expiry = list[Any]
#: Expiries this close to due are due: a timer may fire a little early (uvloop counts whole ms).
EXPIRY_RESOLUTION_SECONDS = 0.001


class Connections:
    """The open websocket connections of one view, pinged from one task rather than one each."""

    def __init__(self, ping_interval: float) -> None:
        self._ping_interval = ping_interval
        self._open: set[_Supervised] = set()
        self._pinger: asyncio.Task[None] | None = None
        # The connections' background work (pings): one set for all rather than one each.
        self._tasks: set[asyncio.Task[None]] = set()
        # Token expiries: one heap and one timer for all (a timer each is 0.5 KiB per connection).
        self._expiries: list[Expiry] = []
        self._forgotten = 0
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._sequence = itertools.count()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._open)

    def add(self, connection: _Supervised) -> None:
        self._open.add(connection)
        self._empty.clear()
        if self._pinger is None or self._pinger.done():
            self._pinger = asyncio.create_task(self._ping_forever(), name="ws-pinger")

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, keeping a reference so it is not collected mid-way."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def discard(self, connection: _Supervised) -> None:
        self._open.discard(connection)
        if not self._open:
            self._empty.set()
            self._expiries.clear()
            self._forgotten = 0
            if self._expiry_timer is not None:
                self._expiry_timer.cancel()
                self._expiry_timer = None

    def expire(self, connection: _Supervised, delay: float) -> Expiry:
        """Call ``connection.expired()`` in ``delay`` seconds, unless ``forget_expiry`` is called
        with what this returns first."""
        loop = asyncio.get_running_loop()
        expiry: Expiry = [loop.time() + delay, next(self._sequence), connection]
        heapq.heappush(self._expiries, expiry)
        if self._expiries[0] is expiry:
            self._arm(loop)
        return expiry

    def forget_expiry(self, expiry: Expiry) -> None:
        if expiry[2] is None:
            return
        expiry[2] = None  # left in the heap, as asyncio leaves its cancelled timers
        self._forgotten += 1
        if self._forgotten > 64 and self._forgotten * 2 > len(self._expiries):
            self._expiries = [entry for entry in self._expiries if entry[2] is not None]
            heapq.heapify(self._expiries)
            self._forgotten = 0

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        self._expiry_timer = loop.call_at(self._expiries[0][0], self._expire_due)

    def _expire_due(self) -> None:
        self._expiry_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time() + EXPIRY_RESOLUTION_SECONDS
        while self._expiries and self._expiries[0][0] <= now:
            connection = heapq.heappop(self._expiries)[2]
            if connection is None:
                self._forgotten -= 1
            else:
                connection.expired()
        if self._expiries:
            self._arm(loop)

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
