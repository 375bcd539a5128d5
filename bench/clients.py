"""The load generator's clients: a minimal HTTP/1.1 client, and websocket subscribers speaking
graphql-transport-ws by hand, whose every received event is timed against its send."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from bench.config import Config
from bench.processes import log

if TYPE_CHECKING:
    from bench.targets import Target

SUBSCRIPTION = (
    "subscription Live($s: ID!) { messageAdded(streamId: $s) "
    "{ id kind content cursor createdAt sender { id username name surname } } }"
)
SEND = "mutation Send($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id cursor } }"
ME = "query Me { me { id } }"
CREATE_STREAM = "mutation Create($t: String!) { createLiveStream(title: $t) { id } }"
HISTORY = (
    "query History($s: ID!, $b: String) { chatMessages(streamId: $s, last: 50, before: $b) { "
    "edges { cursor node { id kind content createdAt sender { id username name surname } } } "
    "pageInfo { hasPreviousPage hasNextPage startCursor endCursor } } }"
)
CONTENT_PREFIX = "bench-"
MARK = '"content":"' + CONTENT_PREFIX


# -- a minimal keep-alive HTTP/1.1 client (cheap enough not to be the bottleneck) --------------


class Http:
    """A keep-alive HTTP/1.1 client for ``POST /graphql``, one request at a time."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.head = f"POST /graphql HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, query: str, variables: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
        """The status code and body of one GraphQL operation (as ``token``'s user, else this
        client's); reconnects once if the server hung up. A body that is not JSON comes back as a
        GraphQL error."""
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = (
            f"{self.head}Authorization: {token or self.token}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        for attempt in (1, 2):  # the server may have closed an idle keep-alive connection
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                assert self.reader is not None
                self.writer.write(request)
                head = await self.reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                status = int(lines[0].split()[1])
                length = None
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    raise RuntimeError(f"no content-length in {head!r}")
                raw = await self.reader.readexactly(length)
                try:
                    return status, json.loads(raw)
                except ValueError:
                    return status, {"errors": [{"message": raw[:300].decode(errors="replace")}]}
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def post(self, query: str, variables: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        """The response body of one GraphQL operation (see :meth:`request`)."""
        _, body = await self.request(query, variables, token)
        return body

    async def data(self, query: str, variables: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        """The ``data`` of one GraphQL operation; RuntimeError if it has errors."""
        body = await self.post(query, variables, token)
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


# -- subscribers and what they receive ------------------------------------------------------


class Message:
    """One sent chat message: when it was issued, and when each subscriber received it."""

    __slots__ = ("done", "expected", "latencies", "marker", "sent")

    def __init__(self, expected: int, marker: bool = False) -> None:
        self.sent = 0.0
        self.latencies: list[float] = []
        self.expected = expected
        self.done = asyncio.Event()
        self.marker = marker


class Subscriber:
    __slots__ = ("ended", "marked", "task", "ws")

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.task: asyncio.Task[None] | None = None
        self.marked = False
        self.ended = False  # the server ended the subscription (error, complete) or the socket


class Tracker:
    """Routes every received event to its message by the key in its content."""

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self.marked = 0
        self.want_marked = 0
        self.all_marked = asyncio.Event()
        self.other_frames: list[str] = []

    def register(self, key: str, expected: int, marker: bool = False) -> Message:
        message = self.messages[key] = Message(expected, marker)
        return message

    def forget(self, keys: list[str]) -> None:
        for key in keys:
            self.messages.pop(key, None)

    def received(self, subscriber: Subscriber, text: str, now: float) -> bool:
        """Record a chat event; False for any other frame."""
        start = text.find(MARK)
        if start < 0:
            return False
        start += len(MARK)
        message = self.messages.get(text[start : text.find('"', start)])
        if message is None:
            return True
        if message.marker:
            if not subscriber.marked:
                subscriber.marked = True
                self.marked += 1
                if self.marked >= self.want_marked:
                    self.all_marked.set()
            return True
        latencies = message.latencies
        latencies.append(now - message.sent)
        if len(latencies) >= message.expected:
            message.done.set()
        return True

    def other(self, text: str) -> None:
        if len(self.other_frames) < 20:
            self.other_frames.append(text[:300])


PONG = json.dumps({"type": "pong"})


async def read_events(subscriber: Subscriber, tracker: Tracker) -> None:
    clock = time.perf_counter
    ws = subscriber.ws
    try:
        async for text in ws:
            if not tracker.received(subscriber, text, clock()):
                try:
                    kind = json.loads(text).get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind == "ping":  # graphql-transport-ws keep-alive: answer as clients must
                    await ws.send(PONG)
                elif kind != "pong":
                    if kind in ("error", "complete"):
                        subscriber.ended = True
                    tracker.other(text)
    except ConnectionClosed as exc:
        if exc.rcvd is not None and exc.rcvd.code not in (1000, 1001):
            tracker.other(f"closed by the server: {exc.rcvd.code} {exc.rcvd.reason}")
    finally:
        subscriber.ended = True


class Load:
    """The load generator's state for one target: its subscribers and a sender."""

    def __init__(self, target: Target, config: Config) -> None:
        self.target = target
        self.config = config
        self.tracker = Tracker()
        self.subscribers: list[Subscriber] = []
        self.sender = target.http(0)
        self._keys = itertools.count()
        self._opened = 0
        self.reopened = 0  # subscriptions the server ended before they were live, opened again

    def key(self, label: str) -> str:
        return f"{label}-{next(self._keys)}"

    async def _open_one(self) -> Subscriber:
        token = self.target.tokens[self._opened % len(self.target.tokens)]
        self._opened += 1
        error: Exception | None = None
        for attempt in range(3):
            try:
                ws = await ws_connect(
                    self.target.ws_url,
                    subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                    compression="deflate" if self.config.compression else None,
                    proxy=None,
                    ping_interval=None,
                    open_timeout=60,
                    close_timeout=5,
                    max_queue=None,
                )
                await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
                ack = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if ack.get("type") != "connection_ack":
                    raise RuntimeError(f"no connection_ack: {ack}")
                await ws.send(
                    json.dumps(
                        {
                            "id": "1",
                            "type": "subscribe",
                            "payload": {"query": SUBSCRIPTION, "variables": {"s": self.target.stream_id}},
                        }
                    )
                )
                subscriber = Subscriber(ws)
                subscriber.task = asyncio.create_task(read_events(subscriber, self.tracker))
                return subscriber
            except (OSError, TimeoutError, ConnectionClosed, RuntimeError) as exc:
                error = exc
                await asyncio.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"could not open a subscription: {error!r}")

    async def _close_one(self, subscriber: Subscriber) -> None:
        try:
            await asyncio.wait_for(subscriber.ws.close(), 10)
        except (TimeoutError, OSError, ConnectionClosed):
            subscriber.ws.transport.abort()
        if subscriber.task is not None:
            subscriber.task.cancel()
            await asyncio.gather(subscriber.task, return_exceptions=True)

    async def ensure(self, count: int) -> None:
        """Have exactly ``count`` live subscriptions, each proven by receiving a marker message."""
        batch = self.config.connect_batch
        if len(self.subscribers) > count:
            closing, self.subscribers = self.subscribers[count:], self.subscribers[:count]
            for i in range(0, len(closing), 500):
                await asyncio.gather(*(self._close_one(s) for s in closing[i : i + 500]))
        started = time.perf_counter()
        while len(self.subscribers) < count:
            size = min(batch, count - len(self.subscribers))
            self.subscribers += await asyncio.gather(*(self._open_one() for _ in range(size)))
        if self._opened and count:
            log(f"  {count} subscriptions open ({time.perf_counter() - started:.1f}s)")
        if count:
            await self.confirm()

    async def confirm(self, timeout: float = 120.0) -> None:
        """Send marker messages until every subscriber has received one (all are subscribed)."""
        tracker = self.tracker
        for subscriber in self.subscribers:
            subscriber.marked = False
        tracker.marked, tracker.want_marked = 0, len(self.subscribers)
        tracker.all_marked.clear()
        deadline = time.perf_counter() + timeout
        keys = []
        while not tracker.all_marked.is_set():
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {tracker.marked} of {len(self.subscribers)} subscribers are live")
            key = self.key("mk")
            keys.append(key)
            tracker.register(key, len(self.subscribers), marker=True)
            await self.sender.data(
                SEND, {"s": self.target.stream_id, "c": CONTENT_PREFIX + key}, self.target.next_token()
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tracker.all_marked.wait(), 3 + len(self.subscribers) / 1000)
            # A subscription the server ended (an error under a burst of connections, say) is
            # opened again, as a client would; too many of them fail the phase.
            dead = [i for i, s in enumerate(self.subscribers) if s.ended and not s.marked]
            if dead and not tracker.all_marked.is_set():
                self.reopened += len(dead)
                if self.reopened > max(10, len(self.subscribers) // 20):
                    raise RuntimeError(f"{self.reopened} subscriptions ended by the server; see the frames")
                log(f"  opening {len(dead)} ended subscriptions again")
                for i in dead:
                    await self._close_one(self.subscribers[i])
                    self.subscribers[i] = await self._open_one()
        tracker.forget(keys)

    async def close(self) -> None:
        await self.ensure(0)
        await self.sender.close()
