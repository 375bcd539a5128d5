"""uvicorn's websocket protocol, writing each distinct outgoing text's frame once for everyone.

The fan-out (``graphql/fanout.py``) hands the *same* ``str`` object to every subscriber of an
operation that uses the same operation id. uvicorn would encode it, build a frame and, with
permessage-deflate, compress it once per connection. :class:`WebSocketProtocol` builds the wire
frame (header and payload; a server's frames are not masked) once per distinct text object and
writes those bytes to every connection (:class:`SharedFrames`).

Compression is shared too: with ``WS_COMPRESSION`` on, the server negotiates permessage-deflate
*without context takeover* both ways (RFC 7692, section 7.1.1): every message is compressed on
its own, so one compressed frame is valid on every connection that negotiated the same window
size (uWebSockets' "shared compressor"), and no connection keeps a zlib stream between messages
(about 43 KiB each, with uvicorn's settings, when it did).

The app's live events skip the ASGI middleware on their way here: the connection offers its
``send_text`` in the scope's extensions (``SEND_TEXT_EXTENSION``), which the websocket handlers
use when it is there (``graphql/websockets.py``), and ``try_send_text`` (``TRY_SEND_TEXT_EXTENSION``),
which the hub's one-pass delivery calls for every waiting subscriber without a task of its own.

The frames written to a connection in one pass of the event loop go to its transport together,
in one ``write()``, when the pass ends (:class:`WriteBatch`): a batch of messages costs each
subscriber one system call, not one per message. Whatever uvicorn writes itself goes after them.

Anything unusual takes uvicorn's own path: binary messages, a connection that is not open, a
handshake not yet complete, an extension we did not negotiate. The fast path keeps uvicorn's
checks, in its order: wait while the transport is paused (flow control), then refuse a
disconnected peer with ``ClientDisconnected``.

This relies on uvicorn's ``WebSocketsSansIOProtocol`` internals (``conn``, ``transport``,
``writable``, ``disconnected``, ``close_sent``, ``handshake_complete``, ``initial_response``,
``request``, ``response``) and on websockets' sans-I/O ``ServerProtocol`` and frames: both are
pinned to a compatible-release range in ``pyproject.toml``, and ``tests/test_wsprotocol.py``
checks the frames byte for byte against websockets' own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State

logger = logging.getLogger(__name__)

#: uvicorn's own permessage-deflate sizes (``WebSocketsSansIOProtocol.__init__``): a 4 KiB
#: window each way and a small compressor.
MAX_WINDOW_BITS = 12
COMPRESS_SETTINGS: dict[str, Any] = {"memLevel": 5}

#: How a connection's text frames are encoded: a window size for a shared compressed frame,
#: ``PLAIN`` for an uncompressed one, ``OWN`` for uvicorn's per-connection path.
PLAIN = 0
OWN = -1

#: The ASGI scope extension under which a connection offers ``send_text(text)``: the same as
#: sending ``{"type": "websocket.send", "text": text}``, without the middleware in between.
SEND_TEXT_EXTENSION = "gql_api.websocket.send_text"
#: The ASGI scope extension under which a connection offers ``try_send_text(text) -> bool``: the
#: same message written at once when that needs no waiting, else nothing done and False.
TRY_SEND_TEXT_EXTENSION = "gql_api.websocket.try_send_text"


def deflate_factory() -> ServerPerMessageDeflateFactory:
    """permessage-deflate as ``gql-api serve`` negotiates it: no context takeover either way."""
    return ServerPerMessageDeflateFactory(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=MAX_WINDOW_BITS,
        client_max_window_bits=MAX_WINDOW_BITS,
        compress_settings=COMPRESS_SETTINGS,
    )


class SharedFrames:
    """The wire frames of the latest texts sent, by the text object's identity and encoding.

    Each entry keeps its text alive, so an ``id`` is not reused while it is cached. A handful
    of entries is enough: the subscribers of one event are written one after another.
    """

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._frames: dict[tuple[int, int], tuple[str, bytes]] = {}
        self._encoders: dict[int, PerMessageDeflate] = {}
        #: How many frames were built (a frame written to N connections counts once).
        self.built = 0

    def frame(self, text: str, encoding: int) -> bytes:
        """The frame of ``text`` as a server sends it, compressed when ``encoding`` is a window
        size (``PLAIN``: not compressed)."""
        key = (id(text), encoding)
        entry = self._frames.get(key)
        if entry is not None:
            return entry[1]
        extensions = [] if encoding == PLAIN else [self._encoder(encoding)]
        frame = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=extensions)
        self.built += 1
        if len(self._frames) >= self._size:
            del self._frames[next(iter(self._frames))]  # the oldest
        self._frames[key] = (text, frame)
        return frame

    def clear(self) -> None:
        self._frames.clear()

    def _encoder(self, window_bits: int) -> PerMessageDeflate:
        encoder = self._encoders.get(window_bits)
        if encoder is None:
            # Without context takeover websockets' encoder starts a fresh compressor for each
            # message: its frames are exactly what each connection's own encoder would make.
            encoder = self._encoders[window_bits] = PerMessageDeflate(
                remote_no_context_takeover=True,
                local_no_context_takeover=True,
                remote_max_window_bits=MAX_WINDOW_BITS,
                local_max_window_bits=window_bits,
                compress_settings=COMPRESS_SETTINGS,
            )
        return encoder


#: The frames of this process's connections.
shared_frames = SharedFrames()


#: The most frames a connection holds back for one write (``WriteBatch``).
MAX_CORKED_FRAMES = 16


class WriteBatch:
    """The connections with shared frames waiting to be written, each written with one system
    call once the event loop's current pass is over.

    A hot stream's messages come in batches (one change-stream read returns every message
    stored since the last), and each is delivered to every subscriber in the same pass: a
    connection then gets its frames of the batch in one ``write()``, not one each. The system
    call is most of what a delivery costs.
    """

    def __init__(self) -> None:
        self._waiting: list[WebSocketProtocol] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, protocol: WebSocketProtocol) -> None:
        """Write ``protocol``'s corked frames when the loop's current pass is over."""
        loop = protocol.loop
        if not self._waiting or self._loop is not loop:
            # The first this pass; or the waiting ones belong to a loop that stopped before
            # their flush ran (tests run one loop after another): nothing to write them to.
            self._waiting = []
            self._loop = loop
            loop.call_soon(self.flush)
        self._waiting.append(protocol)

    def flush(self) -> None:
        """Write every waiting connection's frames now."""
        waiting, self._waiting = self._waiting, []
        for protocol in waiting:
            protocol.uncork()


#: The connections of this process with frames waiting (one event loop per process).
write_batch = WriteBatch()


class _CorkedTransport:
    """A connection's transport as uvicorn's protocol sees it: anything uvicorn writes (a pong,
    a close frame, an uncommon message) or a close goes after the frames corked before it."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: WebSocketProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        if self._protocol.corked is not None:
            self._protocol.uncork()
        self._transport.write(data)

    def close(self) -> None:
        if self._protocol.corked is not None:
            self._protocol.uncork()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ReceiveQueue:
    """What uvicorn's protocol needs of its receive queue (``put_nowait``, ``get``, ``empty``),
    holding nothing while empty: an ``asyncio.Queue`` keeps three deques and an event, about
    3 KiB of every idle connection."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._getters: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake_one()

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                if getter in self._getters:
                    self._getters.remove(getter)
                elif self._items:
                    self._wake_one()  # woken, then cancelled: the next getter takes the item
                raise
        item = self._items.pop(0)
        if self._items:
            self._wake_one()
        return item

    def _wake_one(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                return


class Flag:
    """What uvicorn's protocol needs of its ``writable`` event (``set``, ``clear``, ``wait``,
    ``is_set``), keeping its waiters only while there are some: an ``asyncio.Event`` keeps a
    deque (0.7 KiB) for the connection's whole life."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter
        return True


def _encoding(extensions: list[Any]) -> int:
    if not extensions:
        return PLAIN
    if len(extensions) == 1:
        extension = extensions[0]
        if (
            isinstance(extension, PerMessageDeflate)
            and extension.local_no_context_takeover
            and extension.compress_settings == COMPRESS_SETTINGS
        ):
            return int(extension.local_max_window_bits)
    return OWN


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol (the one it picks itself when ``websockets`` is installed),
    sending shared frames (see the module docstring), and holding less per idle connection.

    A graphql-transport-ws connection gets no websocket pings from uvicorn: the app's own
    ``ping`` messages check that its peer is alive (``app_pinged_subprotocols``).

    uvicorn keeps the handshake's response, with its parsed headers, for the connection's whole
    life but never reads it again (1.5 KiB), and websockets' parser keeps the request (2.5 KiB):
    both are dropped once used. The receive queue and the ``writable`` event are
    :class:`ReceiveQueue` and :class:`Flag`, which hold nothing while nothing waits (4 KiB).
    """

    #: Subprotocols whose connections the app keeps alive with pings of its own (and closes
    #: when they go unanswered): uvicorn's websocket pings (``--ws-ping-interval``) are for
    #: the other connections only.
    app_pinged_subprotocols: frozenset[str] = frozenset({"graphql-transport-ws"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = ReceiveQueue()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()
        if self.config.ws_per_message_deflate:
            self.conn.available_extensions = [deflate_factory()]
        self.encoding: int | None = None  # known once the handshake is complete
        #: Shared frames written in this pass of the loop, not yet handed to the transport
        #: (``WriteBatch``): one frame, or a list of them.
        self.corked: bytes | list[bytes] | None = None
        self._raw_transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._raw_transport = self.transport
        self.transport = _CorkedTransport(self.transport, self)  # type: ignore[assignment]

    def uncork(self) -> None:
        """Hand the frames corked in this pass to the transport, in one write."""
        corked, self.corked = self.corked, None
        transport = self._raw_transport
        if corked is None or transport is None or self.disconnected or transport.is_closing():
            return
        transport.write(corked if isinstance(corked, bytes) else b"".join(corked))

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the handshake was accepted and the app's task created
            extensions = scope["extensions"]
            extensions[SEND_TEXT_EXTENSION] = self.send_text
            extensions[TRY_SEND_TEXT_EXTENSION] = self.try_send_text
        # The scope has a copy of the headers, and the response is built: websockets' frame
        # parser keeps the request for the connection's life, its headers parsed (2.5 KiB).
        event.headers = Headers()

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.send" and message.get("bytes") is None:
            text = message.get("text")
            if text is not None:
                await self.writable.wait()
                if self._write_shared(text):
                    return
        await super().send(message)
        if message["type"] == "websocket.accept":
            self.request = self.response = None  # type: ignore[assignment]
            if message.get("subprotocol") in self.app_pinged_subprotocols:
                # The app pings these itself and closes a peer that does not answer: uvicorn's
                # websocket pings would double the work (a timer, a frame and a pong each) for
                # the same liveness check.
                self.stop_keepalive()

    async def send_text(self, text: str) -> None:
        """Send a text message, as a ``websocket.send`` would, but straight from the app
        (:data:`SEND_TEXT_EXTENSION`): no middleware has anything to do with a message frame,
        and a live event is written to thousands of connections."""
        if self.writable.is_set() and self._write_shared(text):
            return
        await self.send({"type": "websocket.send", "text": text})

    def try_send_text(self, text: str) -> bool:
        """Write a text message's shared frame now, if that needs no waiting: True when it was
        written; False (nothing done) while the transport is paused, or for anything that takes
        uvicorn's path (then ``send_text`` sends it, or raises as it would).

        The hub's live delivery calls this for thousands of connections in one pass
        (``MessageHub``'s listeners), instead of waking a task per connection.
        """
        if not self.writable.is_set():
            return False
        try:
            return self._write_shared(text)
        except (OSError, RuntimeError):  # the transport is gone: ``send_text`` says so
            return False

    def _write_shared(self, text: str) -> bool:
        """Write ``text``'s shared frame; False to leave the message to uvicorn's path (which
        raises or refuses as it always has). Call only while the transport is writable."""
        if (
            self.disconnected
            or not self.handshake_complete
            or self.close_sent
            or self.initial_response is not None
            or self.conn.state is not State.OPEN
        ):
            return False
        encoding = self.encoding
        if encoding is None:
            encoding = self.encoding = _encoding(self.conn.extensions)
        if encoding == OWN:
            return False
        frame = shared_frames.frame(text, encoding)
        corked = self.corked
        if corked is None:
            self.corked = frame
            write_batch.add(self)
        elif isinstance(corked, bytes):
            self.corked = [corked, frame]
        else:
            corked.append(frame)
            if len(corked) >= MAX_CORKED_FRAMES:
                # A long batch (a catch-up after an outage) is written as it goes, so the
                # transport's flow control (``writable``) holds back a slow reader as before.
                self.uncork()
        return True
