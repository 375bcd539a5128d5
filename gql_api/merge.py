"""Two async iterators read as one: a subscription's ordered events with a side channel.

``chatEvents`` is the stream's log (``ChatService.events``: ordered, resumable, it ends when the
stream ends) with the stream's viewer counts (``ViewerCounts.changes``: endless, unordered with
the log) slipped in between. :func:`interleave` reads both at once and yields what comes first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

A = TypeVar("A")
B = TypeVar("B")


class _End:
    """Put by the primary's reader once the primary has ended."""


_END = _End()


async def interleave(primary: AsyncIterator[A], side: AsyncIterator[B]) -> AsyncGenerator[A | B, None]:
    """Every item of ``primary`` and of ``side``, each in its own order, as they come.

    Ends when ``primary`` ends (``side`` is not waited for); an exception from either is raised
    here. Each is read by its own task, one item ahead at most, so a slow consumer holds both
    back rather than letting either pile up. When this generator ends, however it ends
    (closed, cancelled, or done), both readers are cancelled and both iterators closed before
    it returns, so a subscription's resources (its place in the hub) are released at once.
    """
    # One slot: a reader waits until the consumer took the previous item.
    items: asyncio.Queue[A | B | _End | BaseException] = asyncio.Queue(1)

    async def read(source: AsyncIterator[A] | AsyncIterator[B], *, is_primary: bool) -> None:
        try:
            async for item in source:
                await items.put(item)
            if is_primary:
                await items.put(_END)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await items.put(exc)
        finally:
            # Cancelled while holding an item, the source is suspended at its yield: close it
            # now, not when the collector finds it.
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()

    readers = [
        asyncio.create_task(read(primary, is_primary=True), name="interleave:primary"),
        asyncio.create_task(read(side, is_primary=False), name="interleave:side"),
    ]
    try:
        while True:
            item = await items.get()
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for reader in readers:
            reader.cancel()
        # Their sources' own failures were handed over above, or come after the consumer left.
        await asyncio.gather(*readers, return_exceptions=True)
