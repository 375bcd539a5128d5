"""The served websocket protocol: shared frames, byte for byte what websockets would send."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.uri import parse_uri

from gql_api.app import create_app
from gql_api.cli import uvicorn_config
from gql_api.wsprotocol import (
    COMPRESS_SETTINGS,
    MAX_CORKED_FRAMES,
    MAX_WINDOW_BITS,
    Flag,
    ReceiveQueue,
    WebSocketProtocol,
    shared_frames,
)
from tests.conftest import LiveServer, serve

SEND = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id } }"
MESSAGE_ADDED = "subscription($s: ID!) { messageAdded(streamId: $s) { id content } }"


@dataclass
class RawClient:
    """A graphql-transport-ws client on websockets' sans-I/O protocol, keeping every byte the
    server sent after its handshake response, to compare with the frames it decoded."""

    protocol: ClientProtocol
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    raw: bytearray = field(default_factory=bytearray)
    frames: list[Frame] = field(default_factory=list)
    handshake: Response | None = None

    async def _pump(self) -> None:
        data = await asyncio.wait_for(self.reader.read(65536), 10)
        assert data, "the server closed the connection"
        self.raw += data
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self.handshake = event
            else:
                self.frames.append(event)

    def _flush(self) -> None:
        self.writer.write(b"".join(self.protocol.data_to_send()))

    async def send_json(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        self._flush()

    async def receive_json(self) -> Any:
        seen = len(self.frames)
        while len(self.frames) == seen:
            await self._pump()
        frame = self.frames[seen]
        assert frame.opcode is Opcode.TEXT
        return json.loads(frame.data)

    def wire_after_handshake(self) -> bytes:
        raw = bytes(self.raw)
        return raw[raw.index(b"\r\n\r\n") + 4 :]

    @property
    def compressed(self) -> bool:
        return bool(self.protocol.extensions)


@asynccontextmanager
async def raw_client(
    url: str, *, compression: bool, subprotocol: str = "graphql-transport-ws"
) -> AsyncIterator[RawClient]:
    uri = parse_uri(url)
    # What browsers offer: permessage-deflate with client_max_window_bits.
    extensions = [ClientPerMessageDeflateFactory(client_max_window_bits=True)] if compression else None
    protocol = ClientProtocol(uri, extensions=extensions, subprotocols=[subprotocol])  # type: ignore[list-item]
    reader, writer = await asyncio.open_connection(uri.host, uri.port)
    client = RawClient(protocol, reader, writer)
    try:
        protocol.send_request(protocol.connect())
        client._flush()
        while client.handshake is None:
            await client._pump()
        assert client.handshake.status_code == 101
        yield client
    finally:
        writer.close()
        await writer.wait_closed()


def server_frame(frame: Frame, compressed: bool) -> bytes:
    """``frame`` as websockets itself sends it from a server, with each message compressed on
    its own as negotiated (no context takeover)."""
    extensions = []
    if compressed:
        extensions = [PerMessageDeflate(True, True, MAX_WINDOW_BITS, MAX_WINDOW_BITS, COMPRESS_SETTINGS)]
    return Frame(frame.opcode, frame.data, frame.fin).serialize(mask=False, extensions=extensions)


@asynccontextmanager
async def served(
    server: LiveServer, make_settings: Any, uvicorn_options: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[LiveServer]:
    """A fresh app on the session's database, run by uvicorn as ``gql-api serve`` runs it."""
    config_settings = make_settings(**settings)
    app = create_app(config_settings, database=server.services.database)

    def config(app: Any, port: int) -> Any:
        return uvicorn_config(app, config_settings, host="127.0.0.1", port=port, **(uvicorn_options or {}))

    async with serve(app, config=config) as live:
        yield live


async def subscribe(client: RawClient, token: str, stream_id: str, operation_id: str) -> None:
    await client.send_json({"type": "connection_init", "payload": {"Authorization": token}})
    assert (await client.receive_json())["type"] == "connection_ack"
    payload = {"query": MESSAGE_ADDED, "variables": {"s": stream_id}}
    await client.send_json({"type": "subscribe", "id": operation_id, "payload": payload})


async def send_message(live: LiveServer, token: str, stream_id: str, content: str) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        response = await http.post(
            "/graphql",
            json={"query": SEND, "variables": {"s": stream_id, "c": content}},
            headers={"Authorization": token},
        )
    assert "errors" not in response.json()


@pytest.mark.parametrize("ws_compression", [False, True], ids=["compression-off", "compression-on"])
async def test_every_subscriber_gets_byte_exact_frames(server, make_settings, make_user, make_stream, ws_compression):
    """Browsers and plain clients on one server, as uvicorn serves ``gql-api serve``: every frame
    on the wire is exactly what websockets would have sent that connection, compressed or not."""
    owner = await make_user()
    stream = await make_stream(owner)
    stream_id = str(stream.id)
    token = server.token(owner)
    async with served(server, make_settings, ws_compression=ws_compression) as live:
        async with (
            raw_client(live.ws_url, compression=True) as browser_1,
            raw_client(live.ws_url, compression=True) as browser_2,
            raw_client(live.ws_url, compression=False) as plain,
            raw_client(live.ws_url, compression=True) as other_id,
        ):
            clients = [(browser_1, "1"), (browser_2, "1"), (plain, "1"), (other_id, "sub-2")]
            for client, operation_id in clients:
                await subscribe(client, token, stream_id, operation_id)
            await live.services.hub.wait_for_subscribers(stream_id, len(clients))
            await send_message(live, token, stream_id, "héllo, wörld")
            events = [await client.receive_json() for client, _ in clients]

    for (client, operation_id), event in zip(clients, events, strict=True):
        assert event["id"] == operation_id and event["type"] == "next"
        assert event["payload"]["data"]["messageAdded"]["content"] == "héllo, wörld"
        assert client.compressed is (ws_compression and client is not plain)
        expected = b"".join(server_frame(frame, client.compressed) for frame in client.frames)
        assert client.wire_after_handshake() == expected
    if ws_compression:
        (extension,) = browser_1.protocol.extensions
        assert isinstance(extension, PerMessageDeflate)
        # No context takeover either way: neither end keeps a zlib stream between messages.
        assert extension.local_no_context_takeover and extension.remote_no_context_takeover


async def test_a_frame_is_built_once_per_text_and_encoding(server, make_settings, make_user, make_stream):
    """Subscribers of one operation with the same operation id share one frame per encoding:
    three browsers and two plain clients, one message, two frames built."""
    owner = await make_user()
    stream = await make_stream(owner)
    stream_id = str(stream.id)
    token = server.token(owner)
    async with served(server, make_settings, ws_compression=True) as live:
        async with (
            raw_client(live.ws_url, compression=True) as b1,
            raw_client(live.ws_url, compression=True) as b2,
            raw_client(live.ws_url, compression=True) as b3,
            raw_client(live.ws_url, compression=False) as p1,
            raw_client(live.ws_url, compression=False) as p2,
        ):
            clients = [b1, b2, b3, p1, p2]
            for client in clients:
                await subscribe(client, token, stream_id, "1")
            await live.services.hub.wait_for_subscribers(stream_id, len(clients))
            built = shared_frames.built
            await send_message(live, token, stream_id, "once")
            events = [await client.receive_json() for client in clients]
            built = shared_frames.built - built

    assert {event["payload"]["data"]["messageAdded"]["content"] for event in events} == {"once"}
    assert built == 2  # one compressed frame, one plain


async def test_compressed_connections_keep_no_zlib_state(server, make_settings, make_user, make_stream):
    """With WS_COMPRESSION on, an open connection that has sent and received messages holds
    neither a compressor nor a decompressor (each was about 20 KiB per connection)."""
    owner = await make_user()
    stream = await make_stream(owner)
    stream_id = str(stream.id)
    token = server.token(owner)
    async with served(server, make_settings, ws_compression=True) as live:
        async with raw_client(live.ws_url, compression=True) as browser:
            await subscribe(browser, token, stream_id, "1")
            await live.services.hub.wait_for_subscribers(stream_id, 1)
            await send_message(live, token, stream_id, "hi")
            event = await browser.receive_json()
            await browser.send_json({"type": "ping"})
            assert await browser.receive_json() == {"type": "pong"}
            (protocol,) = [p for p in live_protocols() if not p.disconnected]
            (extension,) = protocol.conn.extensions

    assert event["payload"]["data"]["messageAdded"]["content"] == "hi"
    assert isinstance(extension, PerMessageDeflate)
    assert not hasattr(extension, "encoder") and not hasattr(extension, "decoder")


def live_protocols() -> list[WebSocketProtocol]:
    return [o for o in gc.get_objects() if type(o) is WebSocketProtocol]


async def test_the_receive_queue_hands_items_in_order_to_waiting_getters():
    queue = ReceiveQueue()
    assert queue.empty()
    first, second = asyncio.ensure_future(queue.get()), asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)  # both getters waiting (no event to wait on: they are the waiters)
    cancelled = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert await first == "a" and await second == "b"
    queue.put_nowait("c")
    assert not queue.empty()
    assert await queue.get() == "c" and queue.empty()


async def test_a_getter_woken_then_cancelled_passes_the_item_on():
    queue = ReceiveQueue()
    woken, other = asyncio.ensure_future(queue.get()), asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("item")  # wakes `woken`...
    woken.cancel()  # ...which is cancelled before it runs
    assert await other == "item"


async def test_the_writable_flag_releases_its_waiters():
    flag = Flag()
    assert not flag.is_set()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(waiter.done() for waiter in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True] * 3
    flag.clear()
    assert not flag.is_set()
    flag.set()
    assert await flag.wait() is True


def test_an_idle_connections_queue_and_flag_hold_little():
    """uvicorn's asyncio.Queue and asyncio.Event held about 3.7 KiB per connection."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [(ReceiveQueue(), Flag()) for _ in range(100)]
        held = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert held < 256


async def test_served_websockets_drop_the_handshake_requests_headers(server, make_settings, make_user, make_stream):
    """websockets' frame parser keeps the handshake request for the connection's life: its
    headers (about 2.5 KiB) are dropped once uvicorn has built the scope from them."""
    token = server.token(await make_user())
    # Earlier tests' connections may linger in the collector's garbage: only this one's counts.
    earlier = [o for o in gc.get_objects() if type(o) is Request]
    async with served(server, make_settings) as live:
        async with raw_client(live.ws_url, compression=True) as client:
            await client.send_json({"type": "connection_init", "payload": {"Authorization": token}})
            assert (await client.receive_json())["type"] == "connection_ack"
            requests = [o for o in gc.get_objects() if type(o) is Request and all(o is not e for e in earlier)]
            await client.send_json({"type": "ping"})  # the connection still works both ways
            assert await client.receive_json() == {"type": "pong"}
    assert requests  # the parser's, still alive
    assert all(len(request.headers) == 0 for request in requests)


async def test_uvicorn_pings_only_connections_the_app_does_not_ping(server, make_settings, make_user):
    """graphql-transport-ws connections are kept alive by the app's own ``ping`` messages (4499
    when unanswered), so uvicorn's websocket pings, a timer and a frame each per connection, go
    only to the others (legacy graphql-ws), which have no pings of their own."""
    token = server.token(await make_user())
    init = {"type": "connection_init", "payload": {"Authorization": token}}
    async with served(server, make_settings, uvicorn_options={"ws_ping_interval": 0.02}) as live:
        async with raw_client(live.ws_url, compression=False) as modern:
            await modern.send_json(init)
            assert (await modern.receive_json())["type"] == "connection_ack"
            async with raw_client(live.ws_url, compression=False, subprotocol="graphql-ws") as legacy:
                await legacy.send_json(init)
                # Pings have been flowing for both once the legacy connection (opened later) has
                # had three: each answered by the client protocol, so uvicorn goes on.
                while sum(frame.opcode is Opcode.PING for frame in legacy.frames) < 3:
                    await legacy._pump()
                    legacy._flush()
            # Anything sent before the app's pong arrives before it, on the same connection.
            await modern.send_json({"type": "ping"})
            assert await modern.receive_json() == {"type": "pong"}
            assert [frame.opcode for frame in modern.frames] == [Opcode.TEXT, Opcode.TEXT]


@asynccontextmanager
async def acknowledged(
    server: LiveServer, make_settings: Any, token: str
) -> AsyncIterator[tuple[RawClient, WebSocketProtocol]]:
    """A served graphql-transport-ws connection, acknowledged, and the server's protocol for it."""
    async with served(server, make_settings) as live, raw_client(live.ws_url, compression=False) as client:
        await client.send_json({"type": "connection_init", "payload": {"Authorization": token}})
        assert (await client.receive_json())["type"] == "connection_ack"
        [protocol] = [o for o in gc.get_objects() if type(o) is WebSocketProtocol and not o.disconnected]
        yield client, protocol


async def test_frames_of_one_pass_go_out_in_one_write_before_anything_else(server, make_settings, make_user):
    """A connection's shared frames written in one pass of the loop (a batch of messages
    delivered together) reach its transport as one write when the pass ends; anything uvicorn
    writes itself meanwhile (a pong, a close frame) goes after them, in order."""
    async with acknowledged(server, make_settings, server.token(await make_user())) as (client, protocol):
        writes: list[bytes] = []
        transport = protocol._raw_transport
        assert transport is not None

        class Recording:
            def write(self, data: bytes) -> None:
                writes.append(data)
                transport.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(transport, name)

        protocol._raw_transport = Recording()  # type: ignore[assignment]
        assert protocol.try_send_text('"one"')
        assert protocol.try_send_text('"two"')
        assert writes == []  # corked until the pass ends, or until uvicorn writes
        protocol.transport.write(Frame(Opcode.TEXT, b'"three"').serialize(mask=False))
        assert writes == [
            server_frame(Frame(Opcode.TEXT, b'"one"'), False) + server_frame(Frame(Opcode.TEXT, b'"two"'), False)
        ]
        assert protocol.try_send_text('"four"')
        await asyncio.sleep(0)  # the pass ends: the flush runs next
        while len(client.frames) < 5:
            await client._pump()
        assert [json.loads(frame.data) for frame in client.frames[1:]] == ["one", "two", "three", "four"]
        assert len(writes) == 2


async def test_a_long_batch_is_written_as_it_goes(server, make_settings, make_user):
    """The frames held back for one write are capped: a catch-up's hundreds of messages reach
    the transport as they are delivered, so its flow control pauses a slow reader in time."""
    async with acknowledged(server, make_settings, server.token(await make_user())) as (client, protocol):
        for n in range(MAX_CORKED_FRAMES):
            assert protocol.try_send_text(f'"{n}"')
        assert protocol.corked is None  # written: the cap was reached
        assert protocol.try_send_text('"last"')
        assert protocol.corked is not None
        while len(client.frames) < MAX_CORKED_FRAMES + 2:
            await client._pump()
        received = [json.loads(frame.data) for frame in client.frames[1:]]
        assert received == [str(n) for n in range(MAX_CORKED_FRAMES)] + ["last"]
