"""messageAdded over real websockets, through the third-party ``gql`` client, on both subprotocols."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from gql_api.pagination import encode_cursor

MESSAGE_ADDED = """
subscription Live($s: ID!) {
  messageAdded(streamId: $s) { id streamId kind content cursor sender { username } }
}
"""
SEND = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id } }"
SUBPROTOCOLS = ["graphql-transport-ws", "graphql-ws"]


def _transport(server, token: str | None, subprotocol: str) -> WebsocketsTransport:
    payload = {"Authorization": token} if token is not None else {}
    return WebsocketsTransport(
        url=server.ws_url, init_payload=payload, subprotocols=[subprotocol], connect_args={"ping_interval": None}
    )


async def _collect(session, stream_id: str, count: int) -> list[dict[str, Any]]:
    received = []
    request = GraphQLRequest(MESSAGE_ADDED, variable_values={"s": stream_id})
    async for result in session.subscribe(request):
        received.append(result["messageAdded"])
        if len(received) == count:
            break
    return received


async def _closed_with(ws) -> int:
    """The code the server closed ``ws`` with, reading whatever came before."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await _read_until_closed(ws)
    return closed.value.rcvd.code


async def _read_until_closed(ws) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 10)


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_subscribers_receive_new_messages_in_order_and_nothing_else(
    server, make_user, make_stream, client_for, subprotocol
):
    viewer, sender = await make_user(), await make_user()
    stream, other = await make_stream(), await make_stream()
    async with Client(transport=_transport(server, server.token(viewer), subprotocol)) as session:
        task = asyncio.create_task(_collect(session, str(stream.id), 5))
        await server.services.hub.wait_for_subscribers(str(stream.id), 1)
        client = client_for(sender)
        sent = []
        for n in range(5):
            await client.data(SEND, {"s": str(other.id), "c": f"elsewhere {n}"})
            sent.append((await client.data(SEND, {"s": str(stream.id), "c": f"m{n}"}))["sendChatMessage"]["id"])
        received = await asyncio.wait_for(task, 10)

    assert [m["id"] for m in received] == sent
    assert [m["content"] for m in received] == [f"m{n}" for n in range(5)]
    assert {m["streamId"] for m in received} == {str(stream.id)}
    assert {m["sender"]["username"] for m in received} == {sender.username}
    await server.services.hub.wait_for_subscribers(str(stream.id), 0)


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_every_subscriber_gets_each_message_once(server, make_user, make_stream, subprotocol):
    stream = await make_stream()
    sender = await make_user()
    viewers = [await make_user() for _ in range(3)]
    clients = [Client(transport=_transport(server, server.token(v), subprotocol)) for v in viewers]
    sessions = [await c.connect_async() for c in clients]
    try:
        tasks = [asyncio.create_task(_collect(s, str(stream.id), 3)) for s in sessions]
        await server.services.hub.wait_for_subscribers(str(stream.id), 3)
        sent = [str((await server.chat.send_message(sender, str(stream.id), f"x{n}")).id) for n in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        for c in clients:
            await c.close_async()

    for received in results:
        assert [m["id"] for m in received] == sent


async def test_superlikes_arrive_like_messages(server, make_user, make_stream):
    stream = await make_stream()
    fan = await make_user()
    async with Client(transport=_transport(server, server.token(fan), "graphql-transport-ws")) as session:
        task = asyncio.create_task(_collect(session, str(stream.id), 1))
        await server.services.hub.wait_for_subscribers(str(stream.id), 1)
        await server.chat.send_superlike(fan, str(stream.id))
        [received] = await asyncio.wait_for(task, 10)

    assert received["kind"] == "SUPERLIKE"


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_ending_the_stream_completes_the_subscription(server, make_user, make_stream, subprotocol):
    owner = await make_user()
    stream = await make_stream(owner)
    async with Client(transport=_transport(server, server.token(owner), subprotocol)) as session:
        task = asyncio.create_task(_collect(session, str(stream.id), 10))
        await server.services.hub.wait_for_subscribers(str(stream.id), 1)
        await server.chat.send_message(owner, str(stream.id), "last words")
        await server.chat.end_stream(owner, str(stream.id))
        received = await asyncio.wait_for(task, 10)

    assert [m["content"] for m in received] == ["last words"]


async def test_subscribing_to_an_unknown_stream_is_not_found(server, make_user):
    user = await make_user()
    async with Client(transport=_transport(server, server.token(user), "graphql-transport-ws")) as session:
        with pytest.raises(TransportQueryError) as caught:
            await asyncio.wait_for(_collect(session, "64d15f9e2e6c8f4d5a123000", 1), 10)

    assert caught.value.errors[0]["extensions"] == {"code": "NOT_FOUND", "statusCode": 404}


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
@pytest.mark.parametrize("payload", [{}, {"Authorization": "garbage"}, {"authorization": "Bearer x.y.z"}])
async def test_a_missing_or_bad_token_closes_the_socket_with_4403(server, subprotocol, payload):
    async with websockets.connect(server.ws_url, subprotocols=[subprotocol], ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        code = await _closed_with(ws)

    assert code == 4403


@pytest.mark.parametrize("key", ["Authorization", "authorization", "AUTHORIZATION"])
async def test_the_connection_payload_key_is_case_insensitive(server, make_user, key):
    user = await make_user()
    async with websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {key: f"Bearer {server.token(user)}"}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "connection_ack"}


async def test_each_message_is_executed_once_per_distinct_operation_whatever_the_audience(
    server, make_user, make_stream
):
    stream = await make_stream()
    sender = await make_user()
    renderer = server.app.graphql.renderer
    narrow = "subscription($s: ID!) { messageAdded(streamId: $s) { id content } }"
    wide = MESSAGE_ADDED
    audience = [(narrow, "graphql-transport-ws")] * 4 + [(wide, "graphql-ws")] * 3
    clients = [Client(transport=_transport(server, server.token(sender), protocol)) for _, protocol in audience]
    sessions = [await c.connect_async() for c in clients]

    async def one(session, query: str) -> dict[str, Any]:
        async for result in session.subscribe(GraphQLRequest(query, variable_values={"s": str(stream.id)})):
            return result["messageAdded"]
        raise AssertionError("subscription ended")

    try:
        tasks = [asyncio.create_task(one(s, q)) for s, (q, _) in zip(sessions, audience, strict=True)]
        await server.services.hub.wait_for_subscribers(str(stream.id), len(audience))
        before = renderer.executions
        sent = await server.chat.send_message(sender, str(stream.id), "to everyone")
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        for c in clients:
            await c.close_async()

    assert renderer.executions - before == 2  # one per distinct operation, not per subscriber
    assert results[:4] == [{"id": str(sent.id), "content": "to everyone"}] * 4
    assert all(r["id"] == str(sent.id) and r["sender"] == {"username": sender.username} for r in results[4:])


async def test_rendering_many_messages_keeps_nothing_per_message(server, make_user, make_stream):
    """The soak found every rendered event kept alive by graphql-core's per-executor memo; and
    once its last subscriber leaves, the renderer forgets the operation (its document, held by
    the executor, included), so a client that leaves leaves nothing behind."""
    stream = await make_stream()
    sender = await make_user()
    renderer = server.app.graphql.renderer
    query = MESSAGE_ADDED
    received: list[dict[str, Any]] = []
    all_in, leave = asyncio.Event(), asyncio.Event()

    async def collect(session) -> None:
        async for result in session.subscribe(GraphQLRequest(query, variable_values={"s": str(stream.id)})):
            received.append(result["messageAdded"])
            if len(received) == 15:
                all_in.set()
                await leave.wait()
                return

    async with Client(transport=_transport(server, server.token(sender), "graphql-transport-ws")) as session:
        task = asyncio.create_task(collect(session))
        await server.services.hub.wait_for_subscribers(str(stream.id), 1)
        for n in range(15):
            await server.chat.send_message(sender, str(stream.id), f"m{n}")
        await asyncio.wait_for(all_in.wait(), 10)
        ours = [key for key in renderer._executors if json.loads(key[2]) == {"s": str(stream.id)}]
        memos = [len(renderer._executors[key]._relevant_sub_fields) for key in ours]
        leave.set()
        await asyncio.wait_for(task, 10)
    await server.services.hub.wait_for_subscribers(str(stream.id), 0)

    assert memos == [0], memos
    assert [m["content"] for m in received] == [f"m{n}" for n in range(15)]
    assert not set(ours) & (set(renderer._executors) | set(renderer._rendered))


HISTORY = (
    "query($s: ID!) { chatMessages(streamId: $s, last: 100) {"
    " edges { node { id createdAt } } pageInfo { hasNextPage } } }"
)
END = "mutation($id: ID!) { endLiveStream(id: $id) { endedAt } }"
SEND_OR_NOT = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id createdAt } }"


async def test_senders_racing_the_end_are_stored_and_delivered_before_it_or_refused(
    server, make_user, make_stream, client_for
):
    """Writers queued behind the stream's writer lock when it ends used to be stored after the
    end, acknowledged, and never delivered: now each is either before the end, and delivered
    before `complete`, or refused with CONFLICT."""
    owner = await make_user()  # exempt from the rate limit
    stream_id = str((await make_stream(owner)).id)
    client = client_for(owner)
    acknowledged: list[str] = []
    some_acknowledged = asyncio.Event()

    async def send(n: int) -> None:
        body = await client.execute(SEND_OR_NOT, {"s": stream_id, "c": f"m{n}"})
        if "errors" in body:
            assert [e["extensions"]["code"] for e in body["errors"]] == ["CONFLICT"], body
            return
        acknowledged.append(body["data"]["sendChatMessage"]["id"])
        if len(acknowledged) >= 3:
            some_acknowledged.set()

    async with Client(transport=_transport(server, server.token(owner), "graphql-transport-ws")) as session:
        listening = asyncio.create_task(_collect(session, stream_id, 1000))  # until `complete`
        await server.services.hub.wait_for_subscribers(stream_id, 1)
        senders = [asyncio.create_task(send(n)) for n in range(40)]
        await some_acknowledged.wait()
        ending = asyncio.create_task(client.data(END, {"id": stream_id}))
        senders += [asyncio.create_task(send(n)) for n in range(40, 60)]
        ended_at = (await ending)["endLiveStream"]["endedAt"]
        await asyncio.gather(*senders)
        received = await asyncio.wait_for(listening, 10)

    history = (await client.data(HISTORY, {"s": stream_id}))["chatMessages"]
    stored = [edge["node"] for edge in history["edges"]]
    assert sorted(acknowledged) == sorted(m["id"] for m in stored)
    assert [m["id"] for m in received] == [m["id"] for m in stored]
    assert all(m["createdAt"] <= ended_at for m in stored)
    assert history["pageInfo"]["hasNextPage"] is False


async def test_an_ended_stream_with_after_replays_its_messages_then_completes(server, make_user, make_stream):
    owner = await make_user()
    stream_id = str((await make_stream(owner)).id)
    sent = [await server.chat.send_message(owner, stream_id, f"m{n}") for n in range(3)]
    await server.chat.end_stream(owner, stream_id)
    query = "subscription($s: ID!, $a: String) { messageAdded(streamId: $s, after: $a) { id } }"
    async with Client(transport=_transport(server, server.token(owner), "graphql-transport-ws")) as session:
        request = GraphQLRequest(query, variable_values={"s": stream_id, "a": encode_cursor(sent[0].seq)})
        received = await asyncio.wait_for(_all(session.subscribe(request)), 10)
        request = GraphQLRequest(query, variable_values={"s": stream_id, "a": None})
        live = await asyncio.wait_for(_all(session.subscribe(request)), 10)

    assert [r["messageAdded"]["id"] for r in received] == [str(m.id) for m in sent[1:]]
    assert live == []


async def _all(results) -> list[Any]:
    return [result async for result in results]


async def test_an_upper_case_stream_id_names_the_same_stream(server, make_user, make_stream):
    owner = await make_user()
    stream_id = str((await make_stream(owner)).id)
    async with Client(transport=_transport(server, server.token(owner), "graphql-transport-ws")) as session:
        listening = asyncio.create_task(_collect(session, stream_id.upper(), 1000))
        await asyncio.wait_for(server.services.hub.wait_for_subscribers(stream_id, 1), 10)
        sent = await server.chat.send_message(owner, stream_id.upper(), "hi")
        await server.chat.end_stream(owner, stream_id.upper())
        received = await asyncio.wait_for(listening, 10)

    assert [(m["id"], m["streamId"]) for m in received] == [(str(sent.id), stream_id)]
