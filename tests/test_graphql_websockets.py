"""The websocket edge: protocol errors, limits, keep-alive, token expiry, abrupt disconnects."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import signal
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from strawberry.types import ExecutionContext

from gql_api.app import create_app
from gql_api.cli import uvicorn_config
from gql_api.graphql.schema import build_schema
from gql_api.graphql.view import GraphQLView
from gql_api.graphql.websockets import Connections
from tests.conftest import LiveServer, api_process, serve

SUBSCRIBE = "subscription($s: ID!) { messageAdded(streamId: $s) { id content } }"


@pytest.fixture
async def tight(server: LiveServer, make_settings) -> AsyncIterator[LiveServer]:
    """An app with short websocket timers and a small subscription limit, on the session database."""
    settings = make_settings(
        ws_connection_init_timeout_seconds=0.3,
        ws_ping_interval_seconds=0.2,
        ws_max_subscriptions=3,
    )
    app = create_app(settings, database=server.services.database)
    async with serve(app) as live:
        yield live


@pytest.fixture
async def limited(server: LiveServer, make_settings) -> AsyncIterator[LiveServer]:
    """An app with a small body cap and subscription limit, and the default (patient) timers."""
    settings = make_settings(graphql_max_body_bytes=2048, ws_max_subscriptions=3)
    app = create_app(settings, database=server.services.database)
    async with serve(app) as live:
        yield live


@pytest.fixture
async def pinging(server: LiveServer, make_settings) -> AsyncIterator[LiveServer]:
    """An app that pings every half second, with the default ``connection_init`` timeout.

    Long enough for a loaded machine to answer a ping and to send ``connection_init`` in time,
    short enough to see several rounds quickly.
    """
    app = create_app(make_settings(ws_ping_interval_seconds=0.5), database=server.services.database)
    async with serve(app) as live:
        yield live


async def _recv(ws) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def _recv_operation(ws) -> dict[str, Any]:
    """The next message about an operation, answering the keep-alive pings on the way."""
    while (message := await _recv(ws))["type"] == "ping":
        await ws.send(json.dumps({"type": "pong"}))
    return message


async def _read_until_closed(ws, into: list[Any] | None = None) -> None:
    """Read (keeping each message in ``into``) until the server closes ``ws``."""
    while True:
        message = await asyncio.wait_for(ws.recv(), 10)
        if into is not None:
            into.append(json.loads(message))


async def _closed_with(ws) -> int:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await _read_until_closed(ws)
    return closed.value.rcvd.code


async def _connect(live: LiveServer, token: str | None, protocol: str = "graphql-transport-ws"):
    ws = await websockets.connect(live.ws_url, subprotocols=[protocol], ping_interval=None)
    if token is not None:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
        assert (await _recv(ws))["type"] == "connection_ack"
    return ws


def _subscribe(op_id: str, stream_id: str) -> str:
    return json.dumps(
        {"id": op_id, "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"s": stream_id}}}
    )


async def test_connection_init_must_arrive_in_time(tight):
    async with websockets.connect(tight.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None) as ws:
        assert await _closed_with(ws) == 4408


@pytest.mark.parametrize(
    ("before_ack", "messages", "code"),
    [
        (True, [lambda s: _subscribe("1", s)], 4401),
        (False, [lambda s: _subscribe("1", s), lambda s: _subscribe("1", s)], 4409),
        (False, [lambda s: json.dumps({"type": "connection_init", "payload": {}})], 4429),
        (False, [lambda s: "this is not json"], 4400),
    ],
    ids=["subscribe before ack", "duplicate id", "second init", "not json"],
)
async def test_protocol_violations_close_with_their_codes(server, make_user, make_stream, before_ack, messages, code):
    stream = await make_stream()
    ws = await _connect(server, None if before_ack else server.token(await make_user()))
    async with ws:
        for message in messages:
            await ws.send(message(str(stream.id)))
        assert await _closed_with(ws) == code


async def test_one_subscription_too_many_is_an_error_while_the_others_keep_streaming(limited, make_user, make_stream):
    stream = await make_stream()
    user = await make_user()
    async with await _connect(limited, limited.token(user)) as ws:
        for n in range(3):
            await ws.send(_subscribe(str(n), str(stream.id)))
        await limited.services.hub.wait_for_subscribers(str(stream.id), 3)
        await ws.send(_subscribe("extra", str(stream.id)))

        refused = await _recv_operation(ws)
        await limited.chat.send_message(user, str(stream.id), "still here")
        frames = [await _recv_operation(ws) for _ in range(3)]

    assert refused["id"] == "extra" and refused["type"] == "error"
    assert sorted(f["id"] for f in frames) == ["0", "1", "2"]
    assert {f["payload"]["data"]["messageAdded"]["content"] for f in frames} == {"still here"}


async def test_the_server_pings_and_keeps_a_connection_that_answers(pinging, make_user):
    async with await _connect(pinging, pinging.token(await make_user())) as ws:
        for _ in range(3):  # three rounds: each later round checked the previous pong
            assert await _recv(ws) == {"type": "ping"}
            await ws.send(json.dumps({"type": "pong"}))


async def test_a_connection_that_stops_answering_pings_is_closed_and_its_subscriptions_freed(
    pinging, make_user, make_stream
):
    stream = await make_stream()
    async with await _connect(pinging, pinging.token(await make_user())) as ws:
        await ws.send(_subscribe("1", str(stream.id)))
        await pinging.services.hub.wait_for_subscribers(str(stream.id), 1)
        code = await _closed_with(ws)  # never answers the pings
    await pinging.services.hub.wait_for_subscribers(str(stream.id), 0)
    assert code == 4499


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_a_token_that_expires_closes_the_connection_with_4403(server, make_user, make_stream, protocol):
    stream = await make_stream()
    # "exp" has whole seconds: a 1 s ttl could leave ~0 s, expiring before the subscription starts.
    token = server.token(await make_user(), ttl=timedelta(seconds=3))
    async with await _connect(server, token, protocol) as ws:
        start = {
            "id": "1",
            "type": "subscribe" if protocol == "graphql-transport-ws" else "start",
            "payload": {"query": SUBSCRIBE, "variables": {"s": str(stream.id)}},
        }
        await ws.send(json.dumps(start))
        await server.services.hub.wait_for_subscribers(str(stream.id), 1)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await _read_until_closed(ws)
    await server.services.hub.wait_for_subscribers(str(stream.id), 0)
    assert closed.value.rcvd.code == 4403
    # The reason a token already expired at connection_init gets: one string to match.
    assert closed.value.rcvd.reason == "Authentication required: the token has expired"


async def test_abruptly_dropped_sockets_leave_no_subscription_task_or_queue(server, make_user, make_stream):
    stream = await make_stream()
    token = server.token(await make_user())
    view = server.app.graphql
    await view.connections.drained()
    tasks_before = {t for t in asyncio.all_tasks() if t.get_name() != "ws-pinger"}

    sockets = []
    for batch in range(4):
        opened = await asyncio.gather(*(_connect(server, token) for _ in range(50)))
        for n, ws in enumerate(opened):
            await ws.send(_subscribe(f"{batch}-{n}", str(stream.id)))
        sockets += opened
    await server.services.hub.wait_for_subscribers(str(stream.id), 200)

    for ws in sockets:  # a reset, no close frame: SO_LINGER 0 then close
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()

    await server.services.hub.wait_for_subscribers(str(stream.id), 0)
    await view.connections.drained()
    leftover = {t for t in asyncio.all_tasks() if t.get_name() != "ws-pinger"} - tasks_before
    leftover.discard(asyncio.current_task())
    if leftover:  # database reads detached from cancelled subscriptions finish on their own
        _, leftover = await asyncio.wait(leftover, timeout=10)
    assert server.services.hub.subscriber_count() == 0
    assert not leftover, leftover


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_a_connection_handler_gets_no_attribute_after_it_is_made(pinging, make_user, make_stream, protocol):
    # An attribute first set later (the first ping's `_awaiting_pong`) turned the handler's
    # compact attribute storage into a dict: 1.1 KiB more per idle connection.
    stream = await make_stream()
    view = pinging.app.graphql
    ws = await _connect(pinging, pinging.token(await make_user()), protocol)
    try:
        start = "subscribe" if protocol == "graphql-transport-ws" else "start"
        payload = {"query": SUBSCRIBE, "variables": {"s": str(stream.id)}}
        await ws.send(json.dumps({"id": "1", "type": start, "payload": payload}))
        await pinging.services.hub.wait_for_subscribers(str(stream.id), 1)
        if protocol == "graphql-transport-ws":
            assert (await _recv(ws))["type"] == "ping"  # a round of the keep-alive has run
            await ws.send(json.dumps({"type": "pong"}))
        (live,) = tuple(view.connections._open)
        timers = (timedelta(seconds=1),) if protocol == "graphql-transport-ws" else (True, 1.0)
        fresh = type(live)(view, live.websocket, live.context, None, view.schema, *timers)
        assert set(vars(live)) <= set(vars(fresh))
    finally:
        await ws.close()


async def test_an_idle_subscription_keeps_no_execution_context_and_still_delivers(
    server, make_user, make_stream, client_for
):
    # Strawberry's per-operation state (execution context, extensions, graphql-core's executor)
    # was kept for a subscription's whole life: about 10 KiB of each idle subscription.
    stream, sender = await make_stream(), await make_user()
    query = "subscription IdleProbe($s: ID!) { messageAdded(streamId: $s) { id content } }"
    sockets = [await _connect(server, server.token(await make_user())) for _ in range(3)]
    try:
        for ws in sockets:
            payload = {"query": query, "variables": {"s": str(stream.id)}}
            await ws.send(json.dumps({"id": "idle", "type": "subscribe", "payload": payload}))
        await server.services.hub.wait_for_subscribers(str(stream.id), 3)
        gc.collect()
        kept = [o for o in gc.get_objects() if type(o) is ExecutionContext and o.query == query]
        assert kept == []

        sent = await client_for(sender).data(
            'mutation($s: ID!) { sendChatMessage(streamId: $s, content: "still live") { id } }',
            {"s": str(stream.id)},
        )
        for ws in sockets:
            message = await _recv_operation(ws)
            assert message["type"] == "next" and message["id"] == "idle"
            assert message["payload"]["data"]["messageAdded"] == {
                "id": sent["sendChatMessage"]["id"],
                "content": "still live",
            }
    finally:
        for ws in sockets:
            await ws.close()


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_an_idle_connection_keeps_no_message_timer_task_or_header_it_is_done_with(
    server, make_user, make_stream, protocol
):
    # Each idle connection kept, for its whole life, the last message it handled (a subscribe
    # with its query), the connection_init timeout's finished task, the handshake's headers,
    # connection_init's payload and a timer for its token's expiry.
    stream = await make_stream()
    view = server.app.graphql
    await view.connections.drained()
    ws = await websockets.connect(
        server.ws_url, subprotocols=[protocol], ping_interval=None, additional_headers={"X-Probe": "kept?"}
    )
    try:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": server.token(await make_user())}})
        )
        assert (await _recv(ws))["type"] == "connection_ack"
        start = "subscribe" if protocol == "graphql-transport-ws" else "start"
        payload = {"query": SUBSCRIBE, "variables": {"s": str(stream.id)}}
        await ws.send(json.dumps({"id": "probe", "type": start, "payload": payload}))
        await server.services.hub.wait_for_subscribers(str(stream.id), 1)
        (live,) = tuple(view.connections._open)
        running = live.operations if protocol == "graphql-transport-ws" else live.tasks
        (operation_id,) = running  # the id as the server parsed it, in the message it came in
        gc.collect()
        messages = [r for r in gc.get_referrers(operation_id) if isinstance(r, dict) and r.get("type") == start]

        assert messages == []
        assert getattr(live, "connection_init_timeout_task", None) is None and live._init_timer is None
        assert live.context.request.headers.raw == [] and live.context.request.scope["headers"] == []
        assert live.context.connection_params is None
        # Its token's expiry is an entry in the view's one heap, not a timer of its own.
        assert not [value for value in vars(live).values() if isinstance(value, asyncio.TimerHandle)]
        assert live._expiry is not None
        # and the subscription is still live
        await server.chat.send_message(await make_user(), str(stream.id), "still live")
        frame = await _recv_operation(ws)
        assert frame["id"] == "probe" and frame["payload"]["data"]["messageAdded"]["content"] == "still live"
    finally:
        await ws.close()


async def test_a_websocket_without_a_graphql_subprotocol_closes_with_4406(server):
    async with websockets.connect(server.ws_url, subprotocols=["chat"], ping_interval=None) as ws:
        assert ws.subprotocol is None
        assert await _closed_with(ws) == 4406


async def test_gql_api_serves_server_writes_pings_without_a_task_per_connection(server, make_settings, make_user):
    # A round of pings made a task for each connection; the server can write the (shared)
    # frame at once instead.
    settings = make_settings(ws_ping_interval_seconds=0.2)

    def config(app: Any, port: int) -> Any:
        return uvicorn_config(app, settings, host="127.0.0.1", port=port)

    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    created: list[str] = []

    def recording_factory(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Task[Any]:
        created.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **options)

    async with serve(create_app(settings, database=server.services.database), config=config) as live:
        async with await _connect(live, live.token(await make_user())) as ws:
            loop.set_task_factory(recording_factory)
            try:
                for _ in range(2):
                    assert await _recv(ws) == {"type": "ping"}
                    await ws.send(json.dumps({"type": "pong"}))
            finally:
                loop.set_task_factory(previous)

    assert "GraphQLTransportWSHandler._send_ping" not in created


class _Expiring:
    """A stand-in for a connection, as ``Connections`` sees it when its token expires."""

    def __init__(self, name: str, expired: list[str], done: asyncio.Event | None = None) -> None:
        self.name, self._expired, self._done = name, expired, done

    def expired(self) -> None:
        self._expired.append(self.name)
        if self._done is not None:
            self._done.set()


async def test_token_expiries_share_one_heap_fire_in_order_and_can_be_forgotten():
    connections = Connections(ping_interval=60)
    expired: list[str] = []
    last = asyncio.Event()
    connections.expire(_Expiring("third", expired, last), 0.03)
    connections.expire(_Expiring("first", expired), 0.01)
    forgotten = connections.expire(_Expiring("closed before", expired), 0.02)
    connections.forget_expiry(forgotten)
    connections.expire(_Expiring("second", expired), 0.02)

    await asyncio.wait_for(last.wait(), 10)
    assert expired == ["first", "second", "third"]

    # Connections that close long before their tokens expire leave no pile of entries behind.
    entries = [connections.expire(_Expiring(str(n), expired), 3600) for n in range(300)]
    for entry in entries[:250]:
        connections.forget_expiry(entry)
    assert len(connections._expiries) < 200
    for entry in entries[250:]:
        connections.forget_expiry(entry)


@pytest.mark.slow
async def test_sigterm_closes_websockets_with_1001_and_exits_cleanly(tmp_path):
    async with api_process(tmp_path) as api:
        demo = await _demo_token(api)
        async with websockets.connect(api.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": demo}}))
            assert (await _recv(ws))["type"] == "connection_ack"
            api.process.send_signal(signal.SIGTERM)
            code = await _closed_with(ws)
        await asyncio.wait_for(api.process.wait(), 30)
    assert code == 1001
    assert "Traceback" not in "\n".join(api.output), "\n".join(api.output)


async def _demo_token(api) -> str:
    for line in api.output:
        if line.strip().startswith("Token (alice):"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no token in the banner")


PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]


def _start(protocol: str, op_id: Any, payload: Any) -> str:
    kind = "subscribe" if protocol == "graphql-transport-ws" else "start"
    return json.dumps({"id": op_id, "type": kind, "payload": payload})


def _subscription(stream_id: str) -> dict[str, Any]:
    return {"query": SUBSCRIBE, "variables": {"s": stream_id}}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_connection_init_must_arrive_in_time_on_both_protocols(tight, protocol):
    async with websockets.connect(tight.ws_url, subprotocols=[protocol], ping_interval=None) as ws:
        assert await _closed_with(ws) == 4408


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("before_ack", "messages", "code"),
    [
        (True, ["start"], 4401),
        (False, ["start", "start"], 4409),
        (False, [json.dumps({"type": "connection_init", "payload": {}})], 4429),
        (False, ["this is not json"], 4400),
        (False, [json.dumps({"type": "hello"})], 4400),
    ],
    ids=["subscribe before ack", "duplicate id", "second init", "not json", "unknown type"],
)
async def test_protocol_violations_close_with_the_same_codes_on_both_protocols(
    server, make_user, make_stream, protocol, before_ack, messages, code
):
    stream = await make_stream()
    ws = await _connect(server, None if before_ack else server.token(await make_user()), protocol)
    async with ws:
        for message in messages:
            await ws.send(_start(protocol, "1", _subscription(str(stream.id))) if message == "start" else message)
        assert await _closed_with(ws) == code


BEFORE_INIT = {
    "a list": "[1, 2]",
    "a number": "1",
    "a string": '"x"',
    "null": "null",
    "not json": "{",
    "JSON nested deeper than the interpreter's recursion limit": "[" * 20_000 + "]" * 20_000,
    "a binary frame": b'{"type": "connection_init"}',
    "no type": '{"payload": {}}',
    "a type that is not a string": '{"type": ["connection_init"]}',
    "a string init payload": '{"type": "connection_init", "payload": "x"}',
}

AFTER_ACK = {
    "an object id": lambda p, s: _start(p, {"a": 1}, _subscription(s)),
    "a list id": lambda p, s: _start(p, [1], _subscription(s)),
    "a string payload": lambda p, s: _start(p, "1", "x"),
    "no payload": lambda p, s: json.dumps({"id": "1", "type": "subscribe" if p == "graphql-transport-ws" else "start"}),
    "a query that is not a string": lambda p, s: _start(p, "1", {"query": 1}),
    "variables that are a list": lambda p, s: _start(p, "1", {"query": SUBSCRIBE, "variables": [s]}),
    "an operation name that is not a string": lambda p, s: _start(p, "1", {**_subscription(s), "operationName": {}}),
    "a stop without an id": lambda p, s: json.dumps({"type": "complete" if p == "graphql-transport-ws" else "stop"}),
    "a list": lambda p, s: json.dumps([_start(p, "1", _subscription(s))]),
}


def _assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not loud, [r.getMessage() for r in loud]
    ours = [r for r in caplog.records if r.name.startswith(("gql_api", "strawberry"))]
    assert len(ours) <= 1 and all("\n" not in r.getMessage() for r in ours), [r.getMessage() for r in ours]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("frame", BEFORE_INIT.values(), ids=BEFORE_INIT.keys())
async def test_a_malformed_frame_before_authentication_closes_with_4400_and_no_traceback(
    server, caplog, protocol, frame
):
    caplog.set_level(logging.INFO)
    async with websockets.connect(server.ws_url, subprotocols=[protocol], ping_interval=None) as ws:
        await ws.send(frame)
        code = await _closed_with(ws)
    await server.app.graphql.connections.drained()
    assert code == 4400
    _assert_no_traceback(caplog)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("frame", AFTER_ACK.values(), ids=AFTER_ACK.keys())
async def test_a_malformed_operation_message_closes_with_4400_and_no_traceback(
    server, make_user, make_stream, caplog, protocol, frame
):
    stream = await make_stream()
    caplog.set_level(logging.INFO)
    async with await _connect(server, server.token(await make_user()), protocol) as ws:
        await ws.send(frame(protocol, str(stream.id)))
        code = await _closed_with(ws)
    await server.app.graphql.connections.drained()
    assert code == 4400
    _assert_no_traceback(caplog)


def _init_of_size(token: str, size: int, pad: str = "x") -> str:
    """A ``connection_init`` whose UTF-8 encoding is exactly ``size`` bytes."""
    frame = json.dumps({"type": "connection_init", "payload": {"Authorization": token, "pad": ""}}, ensure_ascii=False)
    missing = size - len(frame.encode())
    width = len(pad.encode())
    assert missing % width == 0
    return frame.replace('"pad": ""', f'"pad": "{pad * (missing // width)}"')


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_message_as_large_as_the_body_cap_is_accepted(limited, make_user, protocol):
    cap = limited.app.graphql.max_body_bytes
    async with websockets.connect(limited.ws_url, subprotocols=[protocol], ping_interval=None) as ws:
        await ws.send(_init_of_size(limited.token(await make_user()), cap))
        assert (await _recv(ws))["type"] == "connection_ack"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("pad", ["x", "\u00e9"], ids=["ascii", "two-byte characters"])
async def test_a_message_over_the_body_cap_closes_with_1009_before_authentication(limited, caplog, protocol, pad):
    cap = limited.app.graphql.max_body_bytes
    frame = _init_of_size("no token", cap + len(pad.encode()), pad)
    if pad != "x":
        assert len(frame) <= cap < len(frame.encode())  # bytes are counted, not characters
    async with websockets.connect(limited.ws_url, subprotocols=[protocol], ping_interval=None) as ws:
        await ws.send(frame)
        code = await _closed_with(ws)
    await limited.app.graphql.connections.drained()
    assert code == 1009
    _assert_no_traceback(caplog)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_message_over_the_body_cap_closes_an_authenticated_connection_with_1009(
    limited, make_user, make_stream, protocol
):
    stream = await make_stream()
    cap = limited.app.graphql.max_body_bytes
    async with await _connect(limited, limited.token(await make_user()), protocol) as ws:
        await ws.send(_start(protocol, "1", _subscription(str(stream.id))))
        await limited.services.hub.wait_for_subscribers(str(stream.id), 1)
        await ws.send(_start(protocol, "2", {**_subscription(str(stream.id)), "operationName": "x" * cap}))
        assert await _closed_with(ws) == 1009
    await limited.services.hub.wait_for_subscribers(str(stream.id), 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_subscription_limit_error_has_a_code(limited, make_user, make_stream, protocol):
    stream = await make_stream()
    async with await _connect(limited, limited.token(await make_user()), protocol) as ws:
        for n in range(3):
            await ws.send(_start(protocol, str(n), _subscription(str(stream.id))))
        await limited.services.hub.wait_for_subscribers(str(stream.id), 3)
        await ws.send(_start(protocol, "extra", _subscription(str(stream.id))))
        refused = await _recv_operation(ws)
    assert refused["id"] == "extra" and refused["type"] == "error"
    errors = refused["payload"] if protocol == "graphql-transport-ws" else [refused["payload"]]
    assert [e["extensions"]["code"] for e in errors] == ["BAD_USER_INPUT"]
    assert "at most 3" in errors[0]["message"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_long_duplicate_id_still_closes_with_4409(server, make_user, make_stream, caplog, protocol):
    stream = await make_stream()
    long_id = "é" * 1000  # quoted in the close reason, which may be 123 bytes at most
    async with await _connect(server, server.token(await make_user()), protocol) as ws:
        for _ in range(2):
            await ws.send(_start(protocol, long_id, _subscription(str(stream.id))))
        code = await _closed_with(ws)
    await server.app.graphql.connections.drained()
    assert code == 4409
    _assert_no_traceback(caplog)


async def test_a_syntax_error_quoting_a_long_token_still_closes_with_4400(server, make_user, caplog):
    async with await _connect(server, server.token(await make_user())) as ws:
        await ws.send(_start("graphql-transport-ws", "1", {"query": "{ me { id } } " + "a" * 1000}))
        code = await _closed_with(ws)
    await server.app.graphql.connections.drained()
    assert code == 4400
    _assert_no_traceback(caplog)


class _FailingAuthenticator:
    """Stands in for ``Authenticator``: looking the user up fails with a bug."""

    async def authenticate_claims(self, token: str | None) -> Any:
        raise RuntimeError("secret connection string mongodb://admin:hunter2@db")


@pytest.mark.allow_error_logs
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_bug_at_connection_init_closes_with_1013_and_is_logged_with_its_traceback(server, caplog, protocol):
    services = dataclasses.replace(server.services, authenticator=_FailingAuthenticator())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"services": services}

    view = GraphQLView(build_schema(), metrics=services.metrics, graphiql=False)
    app = Starlette(routes=[WebSocketRoute("/graphql", view)], lifespan=lifespan)
    with caplog.at_level(logging.WARNING, logger="gql_api"):
        async with serve(app) as live:  # type: ignore[arg-type]
            async with websockets.connect(live.ws_url, subprotocols=[protocol], ping_interval=None) as ws:
                await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": "a token"}}))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
            await view.connections.drained()

    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert "hunter2" not in closed.value.rcvd.reason
    [record] = [r for r in caplog.records if r.name.startswith("gql_api")]
    assert record.levelno == logging.ERROR and "connection_init" in record.getMessage()
    assert record.exc_info is not None and "hunter2" in str(record.exc_info[1])


async def _refused(live: LiveServer, protocol: str, payload: dict[str, str], **connect: Any):
    """The close frame and any messages before it, for a ``connection_init`` with ``payload``."""
    messages = []
    async with websockets.connect(live.ws_url, subprotocols=[protocol], ping_interval=None, **connect) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await _read_until_closed(ws, into=messages)
    return closed.value.rcvd, messages


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing", "send the token as Authorization in the connection_init payload"),
        ("in a handshake header", "in the connection_init payload, not a handshake header"),
        ("not a JWT", "the token is not valid"),
        ("wrong signature", "the token is not valid"),
        ("expired", "the token has expired"),
        ("unknown user", "the token's user does not exist"),
    ],
)
async def test_a_refused_token_closes_with_4403_and_says_why(server, make_user, protocol, case, says):
    user = await make_user()
    good = server.token(user)
    payload = {"Authorization": good}
    connect: dict[str, Any] = {}
    if case == "missing":
        payload = {}
    elif case == "in a handshake header":
        payload, connect = {}, {"additional_headers": {"Authorization": good}}
    elif case == "not a JWT":
        payload = {"Authorization": "garbage"}
    elif case == "wrong signature":
        header, claims, _ = good.split(".")
        payload = {"Authorization": f"{header}.{claims}.c2lnbmF0dXJl"}
    elif case == "expired":
        payload = {"Authorization": server.token(user, ttl=timedelta(minutes=-5))}
    elif case == "unknown user":
        payload = {"Authorization": server.services.authenticator.issue("64d15f9e2e6c8f4d5a123000")}

    close, messages = await _refused(server, protocol, payload, **connect)

    assert close.code == 4403
    assert close.reason.startswith("Authentication required: ") and close.reason.endswith(says), close.reason
    if protocol == "graphql-ws":  # the legacy protocol says it in a message too
        assert messages == [
            {"type": "connection_error", "payload": {"message": close.reason, "code": "UNAUTHENTICATED"}}
        ]
    else:
        assert messages == []


async def test_an_idle_subscription_keeps_no_finished_strawberry_stream(server, make_user, make_stream):
    """Strawberry's stream ends once the resolver has handed the live phase over; the live phase
    then runs after it, not inside Strawberry's ``run_operation``, whose frame would keep the
    finished stream and its ``aclosing`` wrapper for the subscription's whole life."""
    stream = await make_stream()
    view = server.app.graphql
    await view.connections.drained()
    ws = await websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None)
    try:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": server.token(await make_user())}})
        )
        assert (await _recv(ws))["type"] == "connection_ack"
        payload = {"query": SUBSCRIBE, "variables": {"s": str(stream.id)}}
        await ws.send(json.dumps({"id": "probe", "type": "subscribe", "payload": payload}))
        await server.services.hub.wait_for_subscribers(str(stream.id), 1)
        (live,) = tuple(view.connections._open)
        (operation,) = live.operations.values()
        chain, awaited = [], operation.task.get_coro()
        while awaited is not None and hasattr(awaited, "cr_code"):
            chain.append((awaited.cr_code.co_name, awaited.cr_code.co_filename))
            awaited = awaited.cr_await

        assert chain and chain[0][0] == "run_operation" and "gql_api" in chain[0][1]
        assert not [name for name, filename in chain if "strawberry" in filename]
    finally:
        await ws.close()
