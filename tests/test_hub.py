"""The hub: per-stream groups that deliver each message once, in sequence order, gaps filled.

Most tests run the hub on an in-memory log (``MemoryLog``, a ``HistoryReader``): ordering and
gap filling need no database. A few run it end to end on the real store and service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from bson import ObjectId

from gql_api.delivery import Delivery
from gql_api.documents import ChatMessage, MessageKind, User
from gql_api.errors import SubscriberTooSlow
from gql_api.hub import MessageHub
from gql_api.pagination import encode_cursor
from gql_api.service import ChatService

STREAM = "s1"


@dataclass(frozen=True)
class Entry:
    stream_id: str
    seq: int
    kind: MessageKind = MessageKind.TEXT


class MemoryLog:
    """The stored log of each stream, in memory; counts the reads the hub makes."""

    def __init__(self) -> None:
        self.entries: dict[str, list[Entry]] = {}
        self.replays = 0
        self.fail_newest: Exception | None = None

    def append(self, count: int = 1, stream_id: str = STREAM) -> list[Entry]:
        log = self.entries.setdefault(stream_id, [])
        added = [Entry(stream_id, len(log) + n + 1) for n in range(count)]
        log += added
        return added

    def end(self, stream_id: str = STREAM) -> Entry:
        log = self.entries.setdefault(stream_id, [])
        log.append(Entry(stream_id, len(log) + 1, MessageKind.STREAM_ENDED))
        return log[-1]

    async def newest(self, stream_id: str) -> Entry | None:
        if self.fail_newest is not None:
            raise self.fail_newest
        log = self.entries.get(stream_id, [])
        return log[-1] if log else None

    async def replay(
        self, stream_id: str, *, after: int, through: int | None = None, every_kind: bool = False
    ) -> AsyncIterator[Entry]:
        self.replays += 1
        for entry in self.entries.get(stream_id, []):
            in_range = after < entry.seq and (through is None or entry.seq <= through)
            if in_range and (every_kind or entry.kind is not MessageKind.STREAM_ENDED):
                yield entry


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog()


def _seqs(entries: list[Entry]) -> list[int]:
    return [entry.seq for entry in entries]


async def test_out_of_order_and_repeated_feeds_become_one_ordered_delivery(log):
    hub = MessageHub(log)
    async with hub.subscribe(STREAM) as subscriber:
        messages = log.append(5)
        await hub.deliver(messages[4])  # skips 1-4: they are read from the log first
        await hub.deliver(messages[2])  # delivered already
        await hub.deliver(messages[4])
        await hub.deliver(log.end())
        received = [m.seq async for m in subscriber]

    assert received == _seqs(messages)


async def test_a_feed_in_order_reads_no_history(log):
    """The next message in sequence skipped nothing: no read, so no database round trip."""
    hub = MessageHub(log)
    async with hub.subscribe(STREAM) as subscriber:
        messages = log.append(3)
        for message in messages:
            await hub.deliver(message)
        assert [(await anext(subscriber)).seq for _ in messages] == _seqs(messages)

    assert log.replays == 0


async def test_only_the_skipped_entries_are_read_to_fill_a_gap(log):
    hub = MessageHub(log)
    async with hub.subscribe(STREAM) as subscriber:
        messages = log.append(6)
        await hub.deliver(messages[0])
        await hub.deliver(messages[3])  # 2 and 3 are missing
        await hub.deliver(messages[5])  # 5 is missing
        received = [(await anext(subscriber)).seq for _ in messages]

    assert received == _seqs(messages)


async def test_a_group_starts_after_what_is_stored(log):
    """What was stored before the first subscriber joined is history, not live."""
    old = log.append(3)
    hub = MessageHub(log)
    async with hub.subscribe(STREAM) as subscriber:
        assert subscriber.start_seq == old[-1].seq
        await hub.deliver(old[1])  # a repeat of a stored message: not live
        [new] = log.append()
        await hub.deliver(new)
        await hub.deliver(log.end())
        assert [m.seq async for m in subscriber] == [new.seq]


async def test_a_late_joiner_starts_after_what_the_group_delivered(log):
    hub = MessageHub(log)
    async with hub.subscribe(STREAM) as early:
        messages = log.append(2)
        await hub.deliver(messages[0])
        async with hub.subscribe(STREAM) as late:
            await hub.deliver(messages[1])
            await hub.deliver(log.end())
            assert late.start_seq == messages[0].seq
            assert [m.seq async for m in late] == [messages[1].seq]
        assert [m.seq async for m in early] == _seqs(messages)


async def test_the_end_entry_completes_subscriptions_after_every_earlier_message(log):
    hub = MessageHub(log)
    async with hub.subscribe(STREAM) as first, hub.subscribe(STREAM) as second:
        messages = log.append(3)
        end = log.end()
        await hub.deliver(end)  # the feed skipped every message: they are read from the log first
        await hub.deliver(messages[1])  # after the end: dropped
        assert hub.subscriber_count() == 0  # the group is gone with its stream
        assert [m.seq async for m in first] == _seqs(messages)
        assert [m.seq async for m in second] == _seqs(messages)


async def test_a_resync_delivers_what_the_feed_missed_ends_included(log):
    """The end is the stream's last entry: no later event would pull it in, a resync must."""
    hub = MessageHub(log)
    async with hub.subscribe(STREAM) as subscriber, hub.subscribe("s2") as other:
        messages = log.append(2)
        log.end()
        others = log.append(1, stream_id="s2")
        await hub.resync()
        assert [m.seq async for m in subscriber] == _seqs(messages)
        assert [(await anext(other)).seq] == _seqs(others)  # still live: s2 has not ended


async def test_joining_a_stream_whose_end_is_stored_completes_at_once(log):
    log.append(2)
    end = log.end()
    hub = MessageHub(log)
    async with hub.subscribe(STREAM) as subscriber:
        assert subscriber.start_seq == end.seq
        assert [m async for m in subscriber] == []
    assert hub.subscriber_count() == 0


async def test_a_subscriber_that_falls_behind_is_closed_without_holding_up_the_others(log):
    hub = MessageHub(log, queue_size=2)
    async with hub.subscribe(STREAM) as slow, hub.subscribe(STREAM) as fast:
        messages = log.append(3)
        await hub.deliver(messages[0])
        assert (await anext(fast)).seq == messages[0].seq
        await hub.deliver(messages[1])
        await hub.deliver(messages[2])  # slow now holds 3 > 2 unread messages
        assert hub.subscriber_count(STREAM) == 1
        assert [(await anext(fast)).seq, (await anext(fast)).seq] == _seqs(messages[1:])
        with pytest.raises(SubscriberTooSlow):
            await anext(slow)


async def test_a_group_that_could_not_read_the_log_is_not_kept(log):
    hub = MessageHub(log)
    log.fail_newest = ConnectionError("the database is away")
    with pytest.raises(ConnectionError):
        async with hub.subscribe(STREAM):
            pass  # pragma: no cover - joining failed
    assert hub.subscriber_count() == 0

    log.fail_newest = None
    async with hub.subscribe(STREAM) as subscriber:  # the next joiner starts the group afresh
        [message] = log.append()
        await hub.deliver(message)
        assert (await anext(subscriber)).seq == message.seq


async def test_leaving_the_block_unsubscribes_even_when_cancelled(log):
    hub = MessageHub(log)
    entered = asyncio.Event()

    async def listen() -> None:
        async with hub.subscribe(STREAM) as subscriber:
            entered.set()
            async for _ in subscriber:
                pass

    task = asyncio.create_task(listen())
    await entered.wait()
    assert hub.subscriber_count(STREAM) == 1
    task.cancel()
    await hub.wait_for_subscribers(STREAM, 0)
    assert hub.subscriber_count() == 0


# -- end to end: the real store and service --------------------------------------------------


async def _stored(server, make_user, stream, count: int) -> list[ChatMessage]:
    sender = await make_user()
    return [await server.chat.send_message(sender, str(stream.id), f"m{n}") for n in range(count)]


async def _ended(server, stream) -> ChatMessage:
    """End the stream through the service; its end entry, to feed a hub by hand."""
    owner = await User.get(ObjectId(stream.owner.id))
    await server.chat.end_stream(owner, str(stream.id))
    end = await server.chat.store.newest(str(stream.id))
    assert end is not None and end.kind is MessageKind.STREAM_ENDED
    return end


async def test_the_store_fills_gaps_and_ends_on_the_real_database(server, make_user, make_stream):
    stream = await make_stream()
    hub = MessageHub(server.chat.store)  # fed by hand here, not by the server's change stream
    async with hub.subscribe(str(stream.id)) as subscriber:
        messages = await _stored(server, make_user, stream, 5)
        await hub.deliver(messages[4])  # skips 1-4: they are read from the database first
        await hub.deliver(messages[2])
        await hub.deliver(await _ended(server, stream))
        received = [m.seq async for m in subscriber]

    assert received == [m.seq for m in messages]


async def test_a_resync_reads_an_end_from_the_real_database(server, make_user, make_stream):
    stream = await make_stream()
    hub = MessageHub(server.chat.store)
    async with hub.subscribe(str(stream.id)) as subscriber:
        messages = await _stored(server, make_user, stream, 2)
        await _ended(server, stream)
        await hub.resync()
        received = [m.seq async for m in subscriber]

    assert received == [m.seq for m in messages]


async def test_a_cursor_ahead_of_the_live_feed_skips_what_it_already_covers(server, make_user, make_stream):
    """A client resumes from a message the hub has not delivered yet: nothing at or before it comes."""
    owner = await make_user()
    stream = await make_stream(owner)
    store = server.chat.store
    hub = MessageHub(store)  # fed by hand: the change stream has not caught up with the writes yet
    chat = ChatService(hub, Delivery(hub), store=store)
    received: list[int] = []
    async with hub.subscribe(str(stream.id)):  # the group exists and has delivered nothing
        messages = await _stored(server, make_user, stream, 4)
        after = encode_cursor(messages[1].seq)

        async def consume() -> None:
            received.extend([message.seq async for message in chat.subscribe(str(stream.id), after)])

        task = asyncio.create_task(consume())
        await hub.wait_for_subscribers(str(stream.id), 2)
        for message in messages:
            await hub.deliver(message)
        await hub.deliver(await _ended(server, stream))
        await asyncio.wait_for(task, 10)

    assert received == [m.seq for m in messages[2:]]


async def test_subscriber_counts_list_each_stream_with_subscribers(log):
    hub = MessageHub(log)
    assert hub.subscriber_counts() == {}
    async with hub.subscribe(STREAM), hub.subscribe(STREAM), hub.subscribe("s2"):
        assert hub.subscriber_counts() == {STREAM: 2, "s2": 1}
        await hub.deliver(log.end("s2"))  # an ended stream has no subscribers left
        assert hub.subscriber_counts() == {STREAM: 2}
    assert hub.subscriber_counts() == {}


async def test_deletions_are_kept_only_for_what_a_queue_can_still_hold(log):
    hub = MessageHub(log, queue_size=3)
    hub.message_deleted(STREAM, 1)  # no subscriber here: nothing to hold back, nothing kept
    async with hub.subscribe(STREAM) as subscriber:

        async def deliver(count: int) -> None:
            for message in log.append(count):
                await hub.deliver(message)
                await anext(subscriber)  # sent: the queue stays short

        assert not hub.is_deleted(STREAM, 1)
        await deliver(5)
        hub.message_deleted(STREAM, 3)
        hub.message_deleted(STREAM, 7)  # not delivered yet: held back when it comes
        assert hub.is_deleted(STREAM, 3) and hub.is_deleted(STREAM, 7)
        hub.message_deleted(STREAM, 2)  # older than any queue holds: already sent or dropped
        assert not hub.is_deleted(STREAM, 2)
        await deliver(5)
        # 10 delivered: a queue holds 8 to 10 at most, so pruning drops 3 and 7.
        hub.message_deleted(STREAM, 9)
        assert not hub.is_deleted(STREAM, 3) and not hub.is_deleted(STREAM, 7)
        assert hub.is_deleted(STREAM, 9)
    assert not hub.is_deleted(STREAM, 9)  # gone with the group


async def test_an_idle_subscriber_is_small(log):
    """Thousands of viewers sit idle on a stream: what each one's subscriber holds while its
    reader waits counts (measured with the subscription's context and its reader's coroutine:
    4.6 KiB with an asyncio.Queue, three deques and an event; 1.9 KiB with a deque; 1.2 KiB
    with a list)."""
    import tracemalloc

    hub = MessageHub(log)
    log.append()
    count = 200
    async with contextlib.AsyncExitStack() as stack:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            subscribers = [await stack.enter_async_context(hub.subscribe(STREAM)) for _ in range(count)]
            # Each reader runs up to its wait for the next message, as an idle subscription's does.
            readers = [anext(subscriber) for subscriber in subscribers]
            waits = [reader.send(None) for reader in readers]
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        message = log.append()[0]
        await hub.deliver(message)
        assert all(wait.done() for wait in waits)  # every waiting reader is woken
        for reader in readers:
            with pytest.raises(StopIteration) as done:
                reader.send(None)
            assert done.value.value == message
    assert held / count < 1.6 * 1024


async def test_the_hub_follows_a_stream_only_while_it_has_subscribers(log):
    hub = MessageHub(log)
    assert not hub.follows(STREAM)
    async with hub.subscribe(STREAM):
        assert hub.follows(STREAM) and not hub.follows("another")
    assert not hub.follows(STREAM)


# -- one-pass delivery: a parked reader's listener -------------------------------------------


async def _parked(subscriber) -> asyncio.Task:
    """A reader waiting on the subscriber's empty queue."""
    task = asyncio.create_task(anext(aiter(subscriber)))
    await asyncio.sleep(0)  # its first step runs up to the wait
    assert subscriber._waiter is not None
    return task


async def test_a_parked_readers_listener_takes_live_entries_without_waking_it(log):
    hub = MessageHub(log)
    taken: list[int] = []
    async with hub.subscribe(STREAM) as subscriber:
        subscriber.listener = lambda entry: taken.append(entry.seq) is None
        reader = await _parked(subscriber)
        for entry in log.append(3):
            await hub.deliver(entry)
        assert taken == [1, 2, 3]
        assert not reader.done()  # nothing was queued: its task was never woken

        subscriber.listener = lambda entry: False  # could not send without waiting
        await hub.deliver(log.append()[0])
        assert (await reader).seq == 4


async def test_entries_queued_before_are_read_first_and_the_listener_waits_for_them(log):
    """The listener is only for a reader parked on an empty queue: an entry never overtakes one
    still queued (or being sent)."""
    hub = MessageHub(log)
    taken: list[int] = []
    async with hub.subscribe(STREAM) as subscriber:
        subscriber.listener = lambda entry: taken.append(entry.seq) is None
        for entry in log.append(2):  # no reader parked: queued
            await hub.deliver(entry)
        assert taken == []
        assert [(await anext(aiter(subscriber))).seq for _ in range(2)] == [1, 2]
        await _parked(subscriber)
        await hub.deliver(log.append()[0])
        assert taken == [3]


async def test_the_end_completes_a_parked_reader_past_its_listener(log):
    hub = MessageHub(log)
    async with hub.subscribe(STREAM) as subscriber:
        subscriber.listener = lambda entry: True
        reader = await _parked(subscriber)
        await hub.deliver(log.end())
        with pytest.raises(StopAsyncIteration):
            await reader


@pytest.mark.allow_error_logs
async def test_a_failing_listener_is_dropped_and_its_entry_queued(log, caplog):
    hub = MessageHub(log)
    async with hub.subscribe(STREAM) as subscriber:
        subscriber.listener = lambda entry: 1 / 0 == 0
        reader = await _parked(subscriber)
        await hub.deliver(log.append()[0])
        assert (await reader).seq == 1
        assert subscriber.listener is None
    assert "A live listener of stream s1 failed" in caplog.text


async def test_a_feeds_consumer_gets_exactly_what_its_iterator_would_yield(server, make_user, make_stream):
    """``Feed.listen``: the live entries go to the consumer in the delivery's pass, filtered as
    the iterator filters them (here: nothing at or before the cursor, no moderation event), and
    what it cannot send comes through the iterator."""
    owner = await make_user()
    stream = await make_stream(owner)
    store = server.chat.store
    hub = MessageHub(store)  # fed by hand
    chat = ChatService(hub, Delivery(hub), store=store)
    key = str(stream.id)
    taken: list[int] = []
    async with hub.subscribe(key):  # the group exists and has delivered nothing
        messages = await _stored(server, make_user, stream, 4)
        feed = chat.subscribe(key, encode_cursor(messages[1].seq))
        # The first wanted entry is refused (as by a paused connection): the iterator yields it,
        # whether the reader was parked yet or not.
        feed.listen(lambda entry: taken.append(entry.seq) is None and entry.seq != messages[2].seq)
        reader = asyncio.create_task(anext(feed))
        await hub.wait_for_subscribers(key, 2)
        for message in messages[:3]:
            await hub.deliver(message)
        assert (await reader).seq == messages[2].seq
        reader = asyncio.create_task(anext(feed))
        await asyncio.sleep(0)  # parked again at once: the live phase reads nothing
        await chat.moderation.ban(owner, key, messages[0].sender.id)  # an event of the log
        await hub.deliver(messages[3])
        await hub.deliver(await store.newest(key))
        assert taken[-1:] == [messages[3].seq]  # and never 1, 2 (before the cursor) or the ban
        assert set(taken) <= {messages[2].seq, messages[3].seq}
        assert not reader.done()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await feed.aclose()
