"""The in-process hub: grouping by stream, bounded queues, completion."""

from __future__ import annotations

import asyncio

import pytest

from gql_api.documents import ChatMessage, MessageKind, PublicProfile
from gql_api.errors import SubscriberTooSlow
from gql_api.hub import MessageHub

# Beanie documents can only be built once Beanie is bound to a database, which the server does.
pytestmark = pytest.mark.usefixtures("server")


def _message(stream_id: str, seq: int) -> ChatMessage:
    sender = PublicProfile(id="u1", username="u1", name="U", surname="One")
    return ChatMessage(stream_id=stream_id, seq=seq, kind=MessageKind.TEXT, content=f"m{seq}", sender=sender, dedup_key=f"k{seq}")


async def test_subscribers_get_their_streams_messages_in_order():
    hub = MessageHub()
    async with hub.subscribe("a") as a, hub.subscribe("b") as b:
        for seq in (1, 2, 3):
            hub.publish(_message("a", seq))
        hub.publish(_message("b", 9))
        hub.end_stream("a")
        hub.end_stream("b")
        assert [m.seq async for m in a] == [1, 2, 3]
        assert [m.seq async for m in b] == [9]


async def test_a_subscriber_that_falls_behind_is_closed_without_holding_up_the_others():
    hub = MessageHub(queue_size=2)
    async with hub.subscribe("s") as slow, hub.subscribe("s") as fast:
        hub.publish(_message("s", 1))
        assert (await anext(fast)).seq == 1
        hub.publish(_message("s", 2))
        hub.publish(_message("s", 3))  # slow now holds 3 > 2 unread messages
        assert hub.subscriber_count("s") == 1
        assert [(await anext(fast)).seq, (await anext(fast)).seq] == [2, 3]
        with pytest.raises(SubscriberTooSlow):
            await anext(slow)


async def test_leaving_the_block_unsubscribes_even_when_cancelled():
    hub = MessageHub()
    entered = asyncio.Event()

    async def listen() -> None:
        async with hub.subscribe("s") as subscriber:
            entered.set()
            async for _ in subscriber:
                pass

    task = asyncio.create_task(listen())
    await entered.wait()
    assert hub.subscriber_count("s") == 1
    task.cancel()
    await hub.wait_for_subscribers("s", 0)
    assert hub.subscriber_count() == 0
