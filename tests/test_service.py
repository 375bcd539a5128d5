"""The write path of ``ChatService``: group commit, its numbering, and what it refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from gql_api.documents import ChatMessage, MessageKind
from gql_api.errors import Conflict
from gql_api.service import ChatService
from gql_api.store import ChatStore
from tests.conftest import api_process
from tests.test_delivery import _demo


class RecordingStore(ChatStore):
    """The real store, recording the size of each group commit."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def insert_entries(self, entries: list[ChatMessage]) -> None:
        self.batches.append(len(entries))
        await super().insert_entries(entries)


def _service(server: Any) -> tuple[ChatService, RecordingStore]:
    store = RecordingStore()
    live = server.services
    return ChatService(live.hub, live.delivery, live.rate_limiter, store=store), store


async def _log(server: Any, stream_id: str) -> list[ChatMessage]:
    return [m async for m in server.chat.store.replay(stream_id, after=0, every_kind=True)]


async def test_concurrent_senders_in_one_stream_are_stored_together_gapless_each_once(server, make_user, make_stream):
    chat, store = _service(server)
    stream = await make_stream()
    senders = [await make_user() for _ in range(40)]
    sent = await asyncio.gather(*(chat.send_message(u, str(stream.id), f"m{i}") for i, u in enumerate(senders)))

    stored = await _log(server, str(stream.id))
    assert [m.seq for m in stored] == list(range(1, 41))
    assert sorted(m.id for m in sent) == sorted(m.id for m in stored)
    assert {m.content for m in stored} == {f"m{i}" for i in range(40)}
    assert max(store.batches) > 1 and sum(store.batches) == 40  # group-committed, each entry once


async def test_a_dedup_collision_inside_a_batch_fails_only_that_send(server, make_user, make_stream):
    chat, store = _service(server)
    owner = await make_user()
    stream = await make_stream(owner)
    # The owner is never rate-limited nor looked up for bans, and this process now knows the
    # stream: each send below reaches the commit queue without waiting, so all are one batch.
    await chat.send_message(owner, str(stream.id), "opens the stream here")
    store.batches.clear()

    sends = [chat.send_message(owner, str(stream.id), f"m{i}") for i in range(5)]
    sends += [chat.send_superlike(owner, str(stream.id)), chat.send_superlike(owner, str(stream.id))]
    sends += [chat.send_message(owner, str(stream.id), f"m{i}") for i in range(5, 10)]
    results = await asyncio.gather(*sends, return_exceptions=True)

    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], Conflict)
    assert "superlike" in refused[0].message
    assert store.batches[0] == 12  # all in one batch, which the collision split
    stored = await _log(server, str(stream.id))
    assert [m.seq for m in stored] == list(range(1, 13))
    assert [m.kind for m in stored].count(MessageKind.SUPERLIKE) == 1
    assert sorted(r.id for r in results if isinstance(r, ChatMessage)) == sorted(m.id for m in stored[1:])


async def test_sends_racing_the_end_are_stored_before_it_or_refused(server, make_user, make_stream):
    chat, _ = _service(server)
    owner = await make_user()
    stream = await make_stream(owner)
    await chat.send_message(owner, str(stream.id), "opens the stream here")

    before = [chat.send_message(owner, str(stream.id), f"b{i}") for i in range(5)]
    after = [chat.send_message(owner, str(stream.id), f"a{i}") for i in range(5)]
    results = await asyncio.gather(*before, chat.end_stream(owner, str(stream.id)), *after, return_exceptions=True)

    stored = await _log(server, str(stream.id))
    [end] = [m for m in stored if m.kind is MessageKind.STREAM_ENDED]
    assert stored[-1] is end and [m.seq for m in stored] == list(range(1, end.seq + 1))
    sent = [r for r in results[:5] + results[6:] if isinstance(r, ChatMessage)]
    assert sorted(m.id for m in sent) == sorted(m.id for m in stored[1:-1])
    assert all(isinstance(r, Conflict) and "ended" in r.message for r in results if isinstance(r, BaseException))
    assert (await chat.get_stream(str(stream.id))).ended_seq == end.seq
    # Known ended here: a later send is refused before it is admitted.
    with pytest.raises(Conflict, match="ended"):
        await chat.send_message(owner, str(stream.id), "late")


SEND = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id } }"
HISTORY = "query($s: ID!) { chatMessages(streamId: $s, last: 100) { edges { node { id cursor } } } }"


async def test_two_replicas_sending_to_one_stream_stay_gapless(tmp_path: Path):
    """Both replicas group-commit into the same stream at once: their batches collide on
    numbers, and the rest of each is renumbered: no gap, no repeat, every send stored."""
    from gql_api.pagination import decode_cursor

    async with api_process(tmp_path) as a, api_process(tmp_path) as b, httpx.AsyncClient(timeout=60) as http:
        demo = await _demo(tmp_path)
        stream, carol = demo["streamId"], demo["users"]["carol"]["token"]  # the owner: no rate limit

        async def post(api: Any, query: str, variables: dict[str, Any]) -> dict[str, Any]:
            payload = {"query": query, "variables": variables}
            response = await http.post(f"{api.url}/graphql", json=payload, headers={"Authorization": carol})
            body = response.json()
            assert "errors" not in body, body
            return body["data"]

        acked = await asyncio.gather(*(post((a, b)[n % 2], SEND, {"s": stream, "c": f"m{n}"}) for n in range(80)))
        edges = (await post(a, HISTORY, {"s": stream}))["chatMessages"]["edges"]

    seqs = [decode_cursor(e["node"]["cursor"]) for e in edges]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    ids = [e["node"]["id"] for e in edges]
    assert {r["sendChatMessage"]["id"] for r in acked} <= set(ids) and len(set(ids)) == len(ids)
    assert len([1 for r in acked]) == 80 and len(ids) >= 80


async def test_messages_to_many_streams_at_once_share_one_insert(server, make_user, make_stream):
    from gql_api.service import ChatService
    from gql_api.store import ChatStore

    class CountingStore(ChatStore):
        def __init__(self) -> None:
            self.inserts: list[int] = []

        async def insert_lone_entries(self, entries):
            self.inserts.append(len(entries))
            return await super().insert_lone_entries(entries)

    store = CountingStore()
    chat = ChatService(server.chat.hub, server.chat.delivery, store=store)
    sender = await make_user()
    streams = [str((await make_stream()).id) for _ in range(6)]
    for stream_id in streams:  # each stream's roster read, and its first message stored
        await chat.send_message(sender, stream_id, "hello")
    store.inserts.clear()

    sent = await asyncio.gather(*(chat.send_message(sender, stream_id, "again") for stream_id in streams))
    assert store.inserts == [6]
    assert [(m.stream_id, m.seq) for m in sent] == [(stream_id, 2) for stream_id in streams]


async def test_an_idle_subscription_keeps_no_stream_document(server, make_stream):
    from gql_api.documents import LiveStream

    chat = server.chat
    stream_id = str((await make_stream()).id)
    # Known to this process already: after joining the hub the subscription goes on to wait for
    # a message without awaiting anything else.
    await chat._known_stream(stream_id)
    for follow in (chat.subscribe, chat.events):
        subscription = follow(stream_id)
        waiting = asyncio.ensure_future(anext(subscription))
        await chat.hub.wait_for_subscribers(stream_id, 1)
        kept = subscription._entries.ag_frame.f_locals.values()  # the Feed's generator
        assert not any(isinstance(value, LiveStream) for value in kept)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await subscription.aclose()
