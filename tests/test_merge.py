"""interleave: two async iterators read as one, on in-memory sources."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gql_api.merge import interleave


class Source:
    """An async generator fed by the test, which records whether it was closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.yielded = 0
        self._progress = asyncio.Condition()

    async def items(self) -> AsyncIterator[object]:
        try:
            while (item := await self.queue.get()) is not StopAsyncIteration:
                if isinstance(item, Exception):
                    raise item
                self.yielded += 1
                async with self._progress:
                    self._progress.notify_all()
                yield item
        finally:
            self.closed.set()

    async def until_yielded(self, count: int) -> None:
        async with self._progress:
            await self._progress.wait_for(lambda: self.yielded >= count)


async def test_yields_both_in_their_own_order_and_ends_with_the_primary():
    primary, side = Source(), Source()
    merged = interleave(primary.items(), side.items())
    primary.queue.put_nowait("p1")
    assert await anext(merged) == "p1"
    side.queue.put_nowait("s1")
    assert await anext(merged) == "s1"
    for item in ("p2", "p3"):
        primary.queue.put_nowait(item)
    assert [await anext(merged), await anext(merged)] == ["p2", "p3"]
    primary.queue.put_nowait(StopAsyncIteration)  # the side never ends: the merge still does
    with pytest.raises(StopAsyncIteration):
        await anext(merged)
    await asyncio.wait_for(side.closed.wait(), 10)


async def test_a_failure_of_either_is_raised_and_both_are_closed():
    for failing in ("primary", "side"):
        sources = {"primary": Source(), "side": Source()}
        merged = interleave(sources["primary"].items(), sources["side"].items())
        sources[failing].queue.put_nowait(LookupError(failing))
        with pytest.raises(LookupError, match=failing):
            await anext(merged)
        for source in sources.values():
            await asyncio.wait_for(source.closed.wait(), 10)


async def test_closing_it_closes_both_even_a_source_holding_an_unread_item():
    primary, side = Source(), Source()
    merged = interleave(primary.items(), side.items())
    for n in range(3):  # one is taken, one waits in the slot, one is held by the reader
        primary.queue.put_nowait(n)
    assert await anext(merged) == 0
    await asyncio.wait_for(primary.until_yielded(3), 10)
    await merged.aclose()
    assert primary.closed.is_set() and side.closed.is_set()


async def test_cancelling_its_consumer_closes_both():
    primary, side = Source(), Source()
    got = asyncio.Event()

    async def consume() -> None:
        async for _ in interleave(primary.items(), side.items()):
            got.set()  # it runs on to wait for the next item before the test wakes up

    consumer = asyncio.create_task(consume())
    side.queue.put_nowait("s1")
    await asyncio.wait_for(got.wait(), 10)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert primary.closed.is_set() and side.closed.is_set()
