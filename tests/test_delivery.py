"""Live delivery across processes, through database restarts, and resumed from a cursor."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import websockets
from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport

from gql_api.app import create_app
from gql_api.embedded import EmbeddedMongo
from gql_api.pagination import decode_cursor, encode_cursor
from tests.conftest import api_process, serve

MESSAGE_ADDED = """
subscription Live($s: ID!, $after: String) {
  messageAdded(streamId: $s, after: $after) { id content cursor }
}
"""
SEND = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id cursor } }"
HISTORY = "query($s: ID!) { chatMessages(streamId: $s, last: 100) { edges { node { id } } } }"


class Subscription:
    """A messageAdded subscription through the gql client, collecting into a queue."""

    def __init__(self, ws_url: str, token: str, stream_id: str, after: str | None) -> None:
        transport = WebsocketsTransport(
            url=ws_url, init_payload={"Authorization": token}, connect_args={"ping_interval": None}
        )
        self.client = Client(transport=transport)
        self.request = GraphQLRequest(MESSAGE_ADDED, variable_values={"s": stream_id, "after": after})
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscription:
        session = await self.client.connect_async()

        async def run() -> None:
            async for result in session.subscribe(self.request):
                await self.received.put(result["messageAdded"])

        self.task = asyncio.create_task(run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close_async()

    async def take(self, count: int) -> list[dict[str, Any]]:
        return [await asyncio.wait_for(self.received.get(), 30) for _ in range(count)]


async def _gql(http_url: str, token: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(base_url=http_url, timeout=30) as client:
        body = (
            await client.post(
                "/graphql", json={"query": query, "variables": variables}, headers={"Authorization": token}
            )
        ).json()
    assert "errors" not in body, body
    return body["data"]


async def _demo(data_dir: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in {"MONGODB_URI", "JWT_SECRET", "APP_ENV"}}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gql_api",
        "demo",
        "--json",
        env={**env, "GQL_API_DATA_DIR": str(data_dir)},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return json.loads(out)


def _seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [decode_cursor(m["cursor"]) for m in messages]


@pytest.mark.slow
async def test_two_api_processes_deliver_every_message_to_both_once_and_in_order(tmp_path):
    async with api_process(tmp_path) as a, api_process(tmp_path) as b:
        assert not any("Started the embedded" in line for line in b.output)  # b reused a's server
        demo = await _demo(tmp_path)
        stream, alice, bob = demo["streamId"], demo["users"]["alice"]["token"], demo["users"]["bob"]["token"]
        marker = (await _gql(a.url, alice, SEND, {"s": stream, "c": "marker"}))["sendChatMessage"]
        start = encode_cursor(decode_cursor(marker["cursor"]) - 1)
        async with (
            Subscription(a.ws_url, bob, stream, start) as on_a,
            Subscription(b.ws_url, alice, stream, start) as on_b,
        ):
            # Receiving the marker proves both have joined; everything after it arrives live.
            assert [m["id"] for m in await on_a.take(1)] == [marker["id"]]
            assert [m["id"] for m in await on_b.take(1)] == [marker["id"]]
            sends = [
                _gql(api.url, token, SEND, {"s": stream, "c": f"{name}{n}"})
                for n in range(10)
                for api, token, name in ((a, alice, "a"), (b, bob, "b"))
            ]
            await asyncio.gather(*sends)
            got_a, got_b = await on_a.take(20), await on_b.take(20)

        stored = [e["node"]["id"] for e in (await _gql(b.url, alice, HISTORY, {"s": stream}))["chatMessages"]["edges"]]
    first = decode_cursor(marker["cursor"])
    assert _seqs(got_a) == _seqs(got_b) == list(range(first + 1, first + 21))
    assert [m["id"] for m in got_a] == [m["id"] for m in got_b] == stored[-20:]
    assert on_a.received.empty() and on_b.received.empty()


async def _died(pid: int) -> None:
    """Wait for a process that is not our child to exit."""
    fd = os.pidfd_open(pid)
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@pytest.mark.slow
async def test_subscribers_see_no_gap_or_duplicate_across_a_database_restart(tmp_path):
    async with api_process(tmp_path, MONGODB_SERVER_SELECTION_TIMEOUT_MS="10000") as api:
        demo = await _demo(tmp_path)
        stream, token = demo["streamId"], demo["users"]["alice"]["token"]
        marker = (await _gql(api.url, token, SEND, {"s": stream, "c": "marker"}))["sendChatMessage"]
        start = encode_cursor(decode_cursor(marker["cursor"]) - 1)
        restarted = EmbeddedMongo(tmp_path)
        async with Subscription(api.ws_url, token, stream, start) as live:
            await live.take(1)
            before = [
                (await _gql(api.url, token, SEND, {"s": stream, "c": f"before{n}"}))["sendChatMessage"]
                for n in range(3)
            ]
            assert [m["id"] for m in await live.take(3)] == [m["id"] for m in before]

            port = urlsplit((tmp_path / "mongodb.uri").read_text().strip()).port
            pid = int((tmp_path / "nx-27017.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            await _died(pid)
            await asyncio.to_thread(restarted.start, port)
            try:
                after = [
                    (await _gql(api.url, token, SEND, {"s": stream, "c": f"after{n}"}))["sendChatMessage"]
                    for n in range(3)
                ]
                got = await live.take(3)
                assert live.received.empty()
            finally:
                await asyncio.to_thread(restarted.stop)
    assert [m["id"] for m in got] == [m["id"] for m in after]
    assert _seqs(got) == [decode_cursor(before[-1]["cursor"]) + n for n in (1, 2, 3)]


async def test_after_replays_stored_messages_then_live_ones_without_gap_under_concurrent_sends(
    server, make_user, make_stream
):
    owner = await make_user()  # the owner is exempt from the rate limit: a burst of 90 is fine
    stream = await make_stream(owner)
    stream_id = str(stream.id)
    senders = [owner] * 3
    per_sender = 30
    total = per_sender * len(senders)
    stored = 0
    progress = asyncio.Condition()

    async def send_all(user) -> None:
        nonlocal stored
        for n in range(per_sender):
            await server.chat.send_message(user, stream_id, f"{id(asyncio.current_task())}-{n}")
            async with progress:
                stored += 1
                progress.notify_all()

    async def subscribe_when(count: int) -> list[int]:
        async with progress:
            await progress.wait_for(lambda: stored >= count)
        after = count // 2  # a cursor well inside what is stored already
        async with Subscription(server.ws_url, server.token(senders[0]), stream_id, encode_cursor(after)) as sub:
            got = await sub.take(total - after)
        return _seqs(got), after

    sending = [asyncio.create_task(send_all(u)) for u in senders]
    results = await asyncio.gather(*(subscribe_when(c) for c in (6, 30, 60)))
    await asyncio.gather(*sending)

    for seqs, after in results:
        assert seqs == list(range(after + 1, total + 1))


async def test_a_slow_subscriber_is_closed_with_subscriber_too_slow_while_a_fast_one_gets_everything(
    server, make_settings, make_user, make_stream
):
    settings = make_settings(subscriber_queue_size=5, ws_ping_interval_seconds=600)
    app = create_app(settings, database=server.services.database)
    # uvicorn's own websocket pings would close the silent client first; this is about the hub.
    async with serve(app, send_buffer=8192, ws_ping_interval=None) as live:
        owner = await make_user()  # exempt from the rate limit: it can send a burst
        stream = await make_stream(owner)
        token = live.token(owner)
        query = {
            "query": "subscription($s: ID!) { messageAdded(streamId: $s) { content } }",
            "variables": {"s": str(stream.id)},
        }

        async def open_subscription(**options: Any):
            ws = await websockets.connect(
                live.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None, **options
            )
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": query}))
            return ws

        # The slow one never reads: a tiny receive buffer, and its client library stops reading
        # from the socket after one unread message, so the server's writes back up. Without
        # compression: deflated, each repetitive message is ~17 bytes on the wire, and filling
        # the buffers took thousands of sends (minutes on a loaded machine) instead of ~200.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(live.url.rsplit(":", 1)[1])))
        slow = await open_subscription(sock=sock, max_queue=1, compression=None)
        fast = await open_subscription()
        await live.services.hub.wait_for_subscribers(str(stream.id), 2)

        received: list[str] = []
        progress = asyncio.Condition()

        async def read_fast() -> None:
            while True:
                frame = json.loads(await fast.recv())
                if frame["type"] == "ping":
                    await fast.send(json.dumps({"type": "pong"}))
                    continue
                assert frame["type"] == "next", frame
                async with progress:
                    received.append(frame["payload"]["data"]["messageAdded"]["content"])
                    progress.notify_all()

        reader = asyncio.create_task(read_fast())
        sent = 0
        overflowed = asyncio.create_task(live.services.hub.wait_for_subscribers(str(stream.id), 1))
        while not overflowed.done():  # until the hub has dropped the slow one
            await live.chat.send_message(owner, str(stream.id), f"{sent:05d}" + "x" * 490)
            sent += 1
            assert sent < 20_000, "the slow subscriber was never dropped"
            # Paced by the fast one: a send takes one round trip now, and a burst of them
            # arrives in one change-stream batch that a 5-message queue cannot hold.
            async with progress:
                await asyncio.wait_for(progress.wait_for(lambda n=sent: len(received) >= n or reader.done()), 60)
        for _ in range(3):  # the fast one goes on receiving after the slow one is gone
            await live.chat.send_message(owner, str(stream.id), f"{sent:05d}" + "x" * 490)
            sent += 1
        async with progress:
            await asyncio.wait_for(progress.wait_for(lambda: len(received) >= sent or reader.done()), 60)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await fast.close()

        frames = []
        # Now the slow one reads: some messages, the error, and the operation's end. Read to
        # the end: an unread frame keeps its client paused, and close() would wait out its timeout.
        while True:
            frame = json.loads(await asyncio.wait_for(slow.recv(), 30))
            if frame["type"] == "ping":
                continue
            frames.append(frame)
            if frame["type"] in {"error", "complete"}:
                break
        await slow.close()

    assert [int(c[:5]) for c in received] == list(range(sent))
    *delivered, failed = [f for f in frames if f["type"] != "complete"]
    errors = failed["payload"] if failed["type"] == "error" else failed["payload"]["errors"]
    assert errors[0]["extensions"] == {"code": "SUBSCRIBER_TOO_SLOW", "statusCode": 503}
    assert all(f["type"] == "next" and "errors" not in f["payload"] for f in delivered)
    assert len(delivered) < sent, (len(delivered), sent)


def test_a_change_stream_closed_cleanly_is_reopened_without_the_failure_backoff():
    """A clean close (no failure) used to wait RETRY_SECONDS[-1], two seconds of silence."""
    from gql_api.compat import EMPTY_BATCH_PAUSE_SECONDS
    from gql_api.delivery import RETRY_SECONDS, retry_pause

    assert retry_pause(0) == EMPTY_BATCH_PAUSE_SECONDS < RETRY_SECONDS[0]
    assert [retry_pause(n) for n in range(1, 8)] == [*RETRY_SECONDS, RETRY_SECONDS[-1], RETRY_SECONDS[-1]]


END = "mutation($id: ID!) { endLiveStream(id: $id) { endedAt } }"
SEND_AT = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id createdAt } }"
HISTORY_AT = "query($s: ID!) { chatMessages(streamId: $s, last: 100) { edges { node { id createdAt } } } }"


@pytest.mark.slow
async def test_across_two_replicas_senders_racing_the_end_are_delivered_before_it_or_refused(tmp_path):
    """Sends through both replicas while one of them ends the stream: every acknowledged
    message is stored before the end and reaches the subscribers of both replicas before
    `complete`; every other send is a CONFLICT."""
    import httpx

    async with api_process(tmp_path) as a, api_process(tmp_path) as b:
        demo = await _demo(tmp_path)
        stream, carol = demo["streamId"], demo["users"]["carol"]["token"]  # the owner: no rate limit
        marker = (await _gql(a.url, carol, SEND, {"s": stream, "c": "marker"}))["sendChatMessage"]
        acknowledged: list[str] = []
        some_acknowledged = asyncio.Event()
        async with httpx.AsyncClient(timeout=30) as http:

            async def post(api, query: str, variables: dict[str, Any]) -> dict[str, Any]:
                response = await http.post(
                    f"{api.url}/graphql",
                    json={"query": query, "variables": variables},
                    headers={"Authorization": carol},
                )
                return response.json()

            async def send(n: int) -> None:
                body = await post((a, b)[n % 2], SEND_AT, {"s": stream, "c": f"m{n}"})
                if "errors" in body:
                    assert [e["extensions"]["code"] for e in body["errors"]] == ["CONFLICT"], body
                    return
                acknowledged.append(body["data"]["sendChatMessage"]["id"])
                if len(acknowledged) >= 3:
                    some_acknowledged.set()

            async with (
                Subscription(a.ws_url, carol, stream, marker["cursor"]) as on_a,
                Subscription(b.ws_url, carol, stream, marker["cursor"]) as on_b,
            ):
                senders = [asyncio.create_task(send(n)) for n in range(40)]
                await some_acknowledged.wait()
                ending = asyncio.create_task(post(a, END, {"id": stream}))
                senders += [asyncio.create_task(send(n)) for n in range(40, 60)]
                ended_at = (await ending)["data"]["endLiveStream"]["endedAt"]
                await asyncio.gather(*senders)
                # Each subscription completes by itself when its replica delivers the end.
                await asyncio.wait_for(asyncio.gather(on_a.task, on_b.task), 30)
                got_a = [on_a.received.get_nowait()["id"] for _ in range(on_a.received.qsize())]
                got_b = [on_b.received.get_nowait()["id"] for _ in range(on_b.received.qsize())]
            stored = [e["node"] for e in (await post(b, HISTORY_AT, {"s": stream}))["data"]["chatMessages"]["edges"]]

    after_marker = stored[[m["id"] for m in stored].index(marker["id"]) + 1 :]
    assert sorted(acknowledged) == sorted(m["id"] for m in after_marker)
    assert got_a == got_b == [m["id"] for m in after_marker]
    assert all(m["createdAt"] <= ended_at for m in stored)


async def test_a_write_of_this_process_is_read_at_once_not_after_the_followers_pause(server, make_user, make_stream):
    """On a database that answers an empty getMore at once (nx-27017) the follower pauses after
    it; this process's own writes end the pause, so they reach its subscribers at once."""
    from gql_api.delivery import ChangeStreamDelivery
    from gql_api.hub import MessageHub
    from gql_api.service import ChatService
    from gql_api.store import ChatStore

    class RecordingHub(MessageHub):
        def __init__(self, store: ChatStore) -> None:
            super().__init__(store)
            self.delivered: asyncio.Queue[Any] = asyncio.Queue()

        def follows(self, stream_id: str) -> bool:
            return True

        async def deliver(self, message: Any) -> None:
            await self.delivered.put(message)

    store = ChatStore()
    hub = RecordingHub(store)
    delivery = ChangeStreamDelivery(hub, server.services.database, empty_batch_pause=3600)
    await delivery.start()
    try:
        await delivery.connected.wait()
        await delivery.resting.wait()  # an empty batch came: an hour's pause has begun
        stream_id = str((await make_stream()).id)
        sent = await ChatService(hub, delivery, store=store).send_message(await make_user(), stream_id, "at once")

        delivered = await asyncio.wait_for(hub.delivered.get(), timeout=60)  # a guard, not a measure
        while delivered.stream_id != stream_id:  # the session's other writes come through too
            delivered = await asyncio.wait_for(hub.delivered.get(), timeout=60)
        assert delivered.id == sent.id
    finally:
        await delivery.stop()
