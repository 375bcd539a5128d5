"""Group commit of independent operations (``Batcher``), with an in-memory write we control."""

from __future__ import annotations

import asyncio

import pytest

from gql_api.batching import Batcher


class Writes:
    """A write that waits until told to finish, recording each batch and how many ran at once."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.started = asyncio.Event()
        self.release: list[asyncio.Event] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        gate = asyncio.Event()
        self.release.append(gate)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.started.set()
        try:
            await gate.wait()
        finally:
            self.running -= 1
        if any(item < 0 for item in items):
            raise ValueError("a negative item fails its batch")
        return [item * 10 for item in items]

    async def wait_for_batches(self, count: int) -> None:
        while len(self.batches) < count:
            self.started.clear()
            await self.started.wait()


async def test_items_submitted_while_a_write_runs_go_together_in_the_next():
    writes = Writes()
    batcher: Batcher[int, int] = Batcher(writes, name="test")
    first = asyncio.ensure_future(batcher.submit(1))
    await writes.wait_for_batches(1)
    rest = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)  # let them queue (nothing to wait on: they are waiting for the write)
    writes.release[0].set()
    await writes.wait_for_batches(2)
    writes.release[1].set()

    assert await first == 10 and [await r for r in rest] == [20, 30, 40]
    assert writes.batches == [[1], [2, 3, 4]] and writes.most_running == 1


async def test_with_two_in_flight_a_second_write_starts_while_the_first_runs_and_no_third():
    writes = Writes()
    batcher: Batcher[int, int] = Batcher(writes, name="test", in_flight=2)
    first = asyncio.ensure_future(batcher.submit(1))
    await writes.wait_for_batches(1)
    second = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3)]
    await writes.wait_for_batches(2)  # started while the first is in flight
    third = [asyncio.ensure_future(batcher.submit(n)) for n in (4, 5)]
    await asyncio.sleep(0)
    assert len(writes.batches) == 2  # both writers busy: these wait

    writes.release[1].set()  # the second ends first: it takes what waits
    await writes.wait_for_batches(3)
    writes.release[0].set()
    writes.release[2].set()

    assert [await f for f in [first, *second, *third]] == [10, 20, 30, 40, 50]
    assert writes.batches == [[1], [2, 3], [4, 5]] and writes.most_running == 2


async def test_a_failed_write_fails_its_batch_alone_and_the_next_items_are_written():
    writes = Writes()
    batcher: Batcher[int, int] = Batcher(writes, name="test")
    failing = asyncio.ensure_future(batcher.submit(-1))
    await writes.wait_for_batches(1)
    writes.release[0].set()
    with pytest.raises(ValueError):
        await failing

    later = asyncio.ensure_future(batcher.submit(7))
    await writes.wait_for_batches(2)
    writes.release[1].set()
    assert await later == 70


async def test_an_item_submitted_as_the_last_write_ends_is_written():
    """The writer leaves its slot as it returns, not in a later callback: an item submitted
    right after still starts a write instead of waiting for ever."""
    writes = Writes()
    batcher: Batcher[int, int] = Batcher(writes, name="test")
    first = asyncio.ensure_future(batcher.submit(1))
    await writes.wait_for_batches(1)
    writes.release[0].set()
    assert await first == 10
    # The writer task has just returned; its done callbacks may not have run yet.
    following = asyncio.ensure_future(batcher.submit(2))
    await writes.wait_for_batches(2)
    writes.release[1].set()
    assert await following == 20
