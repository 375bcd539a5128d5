"""The websocket edge: protocol errors, limits, keep-alive, token expiry, abrupt disconnects."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import websockets
from tests.conftest import LiveServer, api_process, app_with_ready, serve

SUBSCRIBE = "subscription($s: ID!) { messageAdded(streamId: $s) { id content } }"


@pytest.fixture
async def tight(server: LiveServer, make_settings) -> AsyncIterator[LiveServer]:
    """An app with short websocket timers and a small subscription limit, on the session database."""
    settings = make_settings(
        ws_connection_init_timeout_seconds=0.3, ws_ping_interval_seconds=0.2, ws_max_subscriptions=3
    )
    app, ready = app_with_ready(settings, database=server.app.state.database)
    async with serve(app, ready=ready) as live:
        yield live


@pytest.fixture
async def limited(server: LiveServer, make_settings) -> AsyncIterator[LiveServer]:
    """An app allowing three subscriptions per connection, with the default timers.

    Not ``tight``'s: its 0.2 s pings would interleave with the frames under test, and on a
    loaded machine a client that is slow to answer one would be closed.
    """
    app, ready = app_with_ready(make_settings(ws_max_subscriptions=3), database=server.app.state.database)
    async with serve(app, ready=ready) as live:
        yield live


@pytest.fixture
async def pinging(server: LiveServer, make_settings) -> AsyncIterator[LiveServer]:
    """An app that pings every half second, with the default ``connection_init`` timeout.

    Long enough for a loaded machine to answer a ping and to send ``connection_init`` in time,
    short enough to see several rounds quickly.
    """
    app, ready = app_with_ready(make_settings(ws_ping_interval_seconds=0.5), database=server.app.state.database)
    async with serve(app, ready=ready) as live:
        yield live


async def _recv(ws) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def _closed_with(ws) -> int:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    return closed.value.rcvd.code


async def _connect(live: LiveServer, token: str | None, protocol: str = "graphql-transport-ws"):
    ws = await websockets.connect(live.ws_url, subprotocols=[protocol], ping_interval=None)
    if token is not None:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
        assert (await _recv(ws))["type"] == "connection_ack"
    return ws


def _subscribe(op_id: str, stream_id: str) -> str:
    return json.dumps({"id": op_id, "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"s": stream_id}}})


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
        await limited.app.state.hub.wait_for_subscribers(str(stream.id), 3)
        await ws.send(_subscribe("extra", str(stream.id)))
        refused = await _recv(ws)
        await limited.chat.send_message(user, str(stream.id), "still here")
        frames = [await _recv(ws) for _ in range(3)]

    assert refused["id"] == "extra" and refused["type"] == "error"
    assert sorted(f["id"] for f in frames) == ["0", "1", "2"]
    assert {f["payload"]["data"]["messageAdded"]["content"] for f in frames} == {"still here"}


async def test_the_server_pings_and_keeps_a_connection_that_answers(pinging, make_user):
    async with await _connect(pinging, pinging.token(await make_user())) as ws:
        for _ in range(3):  # three rounds: each later round checked the previous pong
            assert await _recv(ws) == {"type": "ping"}
            await ws.send(json.dumps({"type": "pong"}))


async def test_a_connection_that_stops_answering_pings_is_closed_and_its_subscriptions_freed(pinging, make_user, make_stream):
    stream = await make_stream()
    async with await _connect(pinging, pinging.token(await make_user())) as ws:
        await ws.send(_subscribe("1", str(stream.id)))
        await pinging.app.state.hub.wait_for_subscribers(str(stream.id), 1)
        code = await _closed_with(ws)  # never answers the pings
    await pinging.app.state.hub.wait_for_subscribers(str(stream.id), 0)
    assert code == 4499


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_a_token_that_expires_closes_the_connection_with_4403(server, make_user, make_stream, protocol):
    stream = await make_stream()
    # "exp" has whole seconds: a 1 s ttl could leave ~0 s, expiring before the subscription starts.
    token = server.token(await make_user(), ttl=timedelta(seconds=3))
    async with await _connect(server, token, protocol) as ws:
        start = {"id": "1", "type": "subscribe" if protocol == "graphql-transport-ws" else "start",
                 "payload": {"query": SUBSCRIBE, "variables": {"s": str(stream.id)}}}
        await ws.send(json.dumps(start))
        await server.app.state.hub.wait_for_subscribers(str(stream.id), 1)
        assert await _closed_with(ws) == 4403
    await server.app.state.hub.wait_for_subscribers(str(stream.id), 0)


async def test_abruptly_dropped_sockets_leave_no_subscription_task_or_queue(server, make_user, make_stream):
    stream = await make_stream()
    token = server.token(await make_user())
    view = server.app.state.graphql
    await view.connections.drained()
    tasks_before = {t for t in asyncio.all_tasks() if t.get_name() != "ws-pinger"}

    sockets = []
    for batch in range(4):
        opened = await asyncio.gather(*(_connect(server, token) for _ in range(50)))
        for n, ws in enumerate(opened):
            await ws.send(_subscribe(f"{batch}-{n}", str(stream.id)))
        sockets += opened
    await server.app.state.hub.wait_for_subscribers(str(stream.id), 200)

    for ws in sockets:  # a reset, no close frame: SO_LINGER 0 then close
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()

    await server.app.state.hub.wait_for_subscribers(str(stream.id), 0)
    await view.connections.drained()
    leftover = {t for t in asyncio.all_tasks() if t.get_name() != "ws-pinger"} - tasks_before
    leftover.discard(asyncio.current_task())
    if leftover:  # database reads detached from cancelled subscriptions finish on their own
        _, leftover = await asyncio.wait(leftover, timeout=10)
    assert server.app.state.hub.subscriber_count() == 0
    assert not leftover, leftover


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
