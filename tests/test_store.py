"""The store: the domain's queries on the real database, its duplicate-key mapping, ``detached``."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from gql_api.documents import ChatMessage, MessageKind, User
from gql_api.store import (
    ChatStore,
    DedupKeyTaken,
    InsertStopped,
    LoggedEntry,
    SeqTaken,
    UsernameTaken,
    canonical_id,
    detached,
)


@pytest.fixture
def store(server) -> ChatStore:
    return server.chat.store


def _copy(entry: ChatMessage, **changes: Any) -> ChatMessage:
    return ChatMessage(**{**entry.model_dump(exclude={"id", "revision_id"}), **changes})


async def test_an_insert_that_collides_says_which_key_it_collided_on(store, make_user, make_stream, server):
    stream = await make_stream()
    sender = await make_user()
    first = await server.chat.send_message(sender, str(stream.id), "first", "c-1")

    with pytest.raises(SeqTaken):
        await store.insert_entry(_copy(first, dedup_key="another key"))
    with pytest.raises(DedupKeyTaken):
        await store.insert_entry(_copy(first, seq=first.seq + 1))
    assert [m.seq async for m in store.replay(str(stream.id), after=0)] == [first.seq]


async def test_an_ordered_insert_of_entries_stores_those_before_a_collision_and_says_which(
    store, make_user, make_stream, server
):
    stream = await make_stream()
    first = await server.chat.send_message(await make_user(), str(stream.id), "first", "c-1")
    n = first.seq

    def entry(seq: int, key: str) -> ChatMessage:
        return _copy(first, seq=seq, dedup_key=key, content=key)

    with pytest.raises(InsertStopped) as stopped:  # the third takes the first's number
        await store.insert_entries([entry(n + 1, "a"), entry(n + 2, "b"), entry(n, "c"), entry(n + 3, "d")])
    assert stopped.value.stored == 2 and isinstance(stopped.value.cause, SeqTaken)
    with pytest.raises(InsertStopped) as stopped:  # the second has the first's dedup key
        await store.insert_entries([entry(n + 3, "e"), entry(n + 4, "a"), entry(n + 5, "f")])
    assert stopped.value.stored == 1 and isinstance(stopped.value.cause, DedupKeyTaken)
    stored = [m async for m in store.replay(str(stream.id), after=0)]
    assert [(m.seq, m.content) for m in stored] == [(n, "first"), (n + 1, "a"), (n + 2, "b"), (n + 3, "e")]


async def test_a_taken_username_is_username_taken(store, make_user):
    user = await make_user()
    with pytest.raises(UsernameTaken):
        await store.insert_user(User(username=user.username, name="Other", surname=""))
    assert (await store.user_by_username(user.username)).id == user.id


async def test_reads_of_a_log_show_its_end_only_when_asked(store, make_user, make_stream, server):
    owner = await make_user()
    stream = await make_stream(owner)
    key = str(stream.id)
    messages = [await server.chat.send_message(await make_user(), key, f"m{n}") for n in range(2)]
    await server.chat.end_stream(owner, key)

    end = await store.newest(key)
    assert end is not None and end.kind is MessageKind.STREAM_ENDED and end.seq == messages[-1].seq + 1
    window = await store.read_window(key, after=None, before=None, limit=5, newest_first=True)
    assert [m.seq for m in window] == [messages[1].seq, messages[0].seq]
    assert [m.seq async for m in store.replay(key, after=0)] == [m.seq for m in messages]
    assert [m.seq async for m in store.replay(key, after=0, every_kind=True)] == [*[m.seq for m in messages], end.seq]
    assert await store.has_messages_from(key, messages[1].seq)
    assert not await store.has_messages_from(key, end.seq)  # only the end is there
    assert await store.has_messages_through(key, messages[0].seq)
    assert not await store.has_messages_through(key, 0)


async def test_recent_entries_go_back_to_the_first_one_before_a_time(store, make_user, make_stream, server):
    stream = await make_stream()
    key = str(stream.id)
    users = [await make_user() for _ in range(3)]
    sent = [await server.chat.send_message(users[n % 3], key, f"m{n}", f"c-{n}") for n in range(7)]
    recent = await store.recent_entries(key, through=sent[5].seq, since=sent[2].created_at, page=2)

    assert [e.seq for e in recent] == [m.seq for m in reversed(sent[2:6])]  # newest first
    assert recent[-1] == LoggedEntry(
        sent[2].seq, MessageKind.TEXT, str(users[2].id), sent[2].created_at, f"c:{users[2].id}:c-2"
    )
    assert await store.recent_entries(key, through=0, since=sent[0].created_at) == []


def test_canonical_ids_are_lower_case_hex():
    assert canonical_id("65F0A1B2C3D4E5F60718293A") == "65f0a1b2c3d4e5f60718293a"
    assert canonical_id("not an id") is None


def _tasks_running(function: Any) -> list[asyncio.Task[Any]]:
    """The tasks running ``function``'s coroutine: the one ``detached`` made, whatever other tasks
    of the session's app come and go meanwhile."""
    return [task for task in asyncio.all_tasks() if getattr(task.get_coro(), "cr_code", None) is function.__code__]


async def test_a_detached_operation_outlives_its_cancelled_caller():
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def operation() -> str:
        started.set()
        await release.wait()
        finished.append("done")
        return "done"

    caller = asyncio.create_task(detached(operation()))
    await started.wait()
    [inner] = _tasks_running(operation)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller  # at once: the operation is still waiting
    assert not inner.done()

    release.set()
    assert await inner == "done" and finished == ["done"]


async def test_a_detached_failure_after_its_caller_left_is_not_reported_as_lost():
    started, release = asyncio.Event(), asyncio.Event()
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))

    async def operation() -> None:
        started.set()
        await release.wait()
        raise RuntimeError("the write failed after its caller left")

    try:
        caller = asyncio.create_task(detached(operation()))
        await started.wait()
        [inner] = _tasks_running(operation)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        release.set()
        await asyncio.wait({inner})
        del inner, caller
        gc.collect()  # an unretrieved exception is reported when its task is collected
    finally:
        loop.set_exception_handler(previous)
    assert reported == []


async def test_entries_are_stored_exactly_as_beanie_would_store_them(store, make_user, make_stream, server):
    from beanie.odm.utils.encoder import Encoder

    from gql_api.documents import ChatRole, ChatSettings, LogEvent, utcnow

    stream = await make_stream()
    first = await server.chat.send_message(await make_user(), str(stream.id), "first", "c-1")
    event = _copy(
        first,
        seq=first.seq + 1,
        dedup_key="e",
        kind=MessageKind.USER_BANNED,
        sender_role=ChatRole.MODERATOR,
        event=LogEvent(actor=first.sender, target=first.sender, expires_at=utcnow(), settings=ChatSettings()),
    )
    await store.insert_entries([event])

    collection = ChatMessage.get_pymongo_collection()
    for entry in (first, event):
        stored = await collection.find_one({"_id": entry.id})
        assert stored == Encoder(to_db=True, keep_nulls=True).encode(entry)


async def test_lone_entries_of_different_streams_are_stored_or_refused_each_alone(
    store, make_user, make_stream, server
):
    sender = await make_user()
    firsts = [await server.chat.send_message(sender, str((await make_stream()).id), "first", "c-1") for _ in range(3)]
    taken_number = _copy(firsts[0], dedup_key="new")  # the first's number
    taken_key = _copy(firsts[1], seq=firsts[1].seq + 1)  # the first's dedup key
    fine = _copy(firsts[2], seq=firsts[2].seq + 1, dedup_key="fresh", content="second")

    outcomes = await store.insert_lone_entries([taken_number, taken_key, fine])
    assert [type(outcome) for outcome in outcomes] == [SeqTaken, DedupKeyTaken, type(None)]
    assert [m.content async for m in store.replay(firsts[2].stream_id, after=0)] == ["first", "second"]
    assert [m.seq async for m in store.replay(firsts[0].stream_id, after=0)] == [firsts[0].seq]
