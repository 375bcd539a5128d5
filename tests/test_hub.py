"""The hub: per-stream groups that deliver each message once, in sequence order, gaps filled."""

from __future__ import annotations

import asyncio

import pytest

from bson import ObjectId

from gql_api import history
from gql_api.delivery import Delivery
from gql_api.documents import ChatMessage, MessageKind, User
from gql_api.errors import SubscriberTooSlow
from gql_api.hub import MessageHub
from gql_api.pagination import encode_cursor
from gql_api.service import ChatService


async def _stored(server, make_user, stream, count: int):
    sender = await make_user()
    return [await server.chat.send_message(sender, str(stream.id), f"m{n}") for n in range(count)]


async def _ended(server, stream) -> ChatMessage:
    """End the stream through the service; its end entry, to feed a hub by hand."""
    owner = await User.get(ObjectId(stream.owner.id))
    await server.chat.end_stream(owner, str(stream.id))
    end = await history.newest(str(stream.id))
    assert end is not None and end.kind is MessageKind.STREAM_ENDED
    return end


async def test_out_of_order_and_repeated_feeds_become_one_ordered_delivery(server, make_user, make_stream):
    stream = await make_stream()
    hub = MessageHub()  # fed by hand here, not by the server's change stream
    async with hub.subscribe(str(stream.id)) as subscriber:
        messages = await _stored(server, make_user, stream, 5)
        await hub.deliver(messages[4])  # skips 1-4: they are read from history first
        await hub.deliver(messages[2])  # delivered already
        await hub.deliver(messages[4])
        await hub.deliver(await _ended(server, stream))
        received = [m.seq async for m in subscriber]

    assert received == [m.seq for m in messages]


async def test_a_late_joiner_starts_after_what_the_group_delivered(server, make_user, make_stream):
    stream = await make_stream()
    hub = MessageHub()
    async with hub.subscribe(str(stream.id)) as early:
        messages = await _stored(server, make_user, stream, 2)
        await hub.deliver(messages[0])
        async with hub.subscribe(str(stream.id)) as late:
            await hub.deliver(messages[1])
            await hub.deliver(await _ended(server, stream))
            assert late.start_seq == messages[0].seq
            assert [m.seq async for m in late] == [messages[1].seq]
        assert [m.seq async for m in early] == [m.seq for m in messages]


async def test_a_subscriber_that_falls_behind_is_closed_without_holding_up_the_others(server, make_user, make_stream):
    stream = await make_stream()
    hub = MessageHub(queue_size=2)
    async with hub.subscribe(str(stream.id)) as slow, hub.subscribe(str(stream.id)) as fast:
        messages = await _stored(server, make_user, stream, 3)
        await hub.deliver(messages[0])
        assert (await anext(fast)).seq == messages[0].seq
        await hub.deliver(messages[1])
        await hub.deliver(messages[2])  # slow now holds 3 > 2 unread messages
        assert hub.subscriber_count(str(stream.id)) == 1
        assert [(await anext(fast)).seq, (await anext(fast)).seq] == [messages[1].seq, messages[2].seq]
        with pytest.raises(SubscriberTooSlow):
            await anext(slow)


async def test_leaving_the_block_unsubscribes_even_when_cancelled(make_stream):
    stream = await make_stream()
    hub = MessageHub()
    entered = asyncio.Event()

    async def listen() -> None:
        async with hub.subscribe(str(stream.id)) as subscriber:
            entered.set()
            async for _ in subscriber:
                pass

    task = asyncio.create_task(listen())
    await entered.wait()
    assert hub.subscriber_count(str(stream.id)) == 1
    task.cancel()
    await hub.wait_for_subscribers(str(stream.id), 0)
    assert hub.subscriber_count() == 0


async def test_a_cursor_ahead_of_the_live_feed_skips_what_it_already_covers(server, make_user, make_stream):
    """A client resumes from a message the hub has not delivered yet: nothing at or before it comes."""
    owner = await make_user()
    stream = await make_stream(owner)
    hub = MessageHub()  # fed by hand: the change stream has not caught up with the writes yet
    chat = ChatService(hub, Delivery(hub))
    received: list[int] = []
    async with hub.subscribe(str(stream.id)):  # the group exists and has delivered nothing
        messages = await _stored(server, make_user, stream, 4)
        after = encode_cursor(messages[1].seq)

        async def consume() -> None:
            async for message in chat.subscribe(str(stream.id), after):
                received.append(message.seq)

        task = asyncio.create_task(consume())
        await hub.wait_for_subscribers(str(stream.id), 2)
        for message in messages:
            await hub.deliver(message)
        await hub.deliver(await _ended(server, stream))
        await asyncio.wait_for(task, 10)

    assert received == [m.seq for m in messages[2:]]


async def test_the_end_entry_completes_subscriptions_after_every_earlier_message(server, make_user, make_stream):
    stream = await make_stream()
    hub = MessageHub()
    async with hub.subscribe(str(stream.id)) as subscriber:
        messages = await _stored(server, make_user, stream, 3)
        end = await _ended(server, stream)
        await hub.deliver(end)  # the feed skipped every message: they are read from history first
        await hub.deliver(messages[1])  # after the end: dropped
        received = [m.seq async for m in subscriber]

    assert received == [m.seq for m in messages]
    assert end.seq == messages[-1].seq + 1
    assert hub.subscriber_count() == 0


async def test_a_resync_delivers_an_end_the_feed_missed(server, make_user, make_stream):
    """The end is the stream's last entry: no later event would pull it in, a resync must."""
    stream = await make_stream()
    hub = MessageHub()
    async with hub.subscribe(str(stream.id)) as subscriber:
        messages = await _stored(server, make_user, stream, 2)
        await _ended(server, stream)
        await hub.resync()
        received = [m.seq async for m in subscriber]

    assert received == [m.seq for m in messages]


async def test_joining_a_stream_whose_end_is_stored_completes_at_once(server, make_user, make_stream):
    stream = await make_stream()
    await _stored(server, make_user, stream, 2)
    end = await _ended(server, stream)
    hub = MessageHub()
    async with hub.subscribe(str(stream.id)) as subscriber:
        assert subscriber.start_seq == end.seq
        assert [m async for m in subscriber] == []
    assert hub.subscriber_count() == 0
