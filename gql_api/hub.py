"""The live-message hub: fans new messages out to the subscribers of their stream, in-process."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gql_api.documents import ChatMessage
from gql_api.errors import SubscriberTooSlow

logger = logging.getLogger(__name__)


class _End:
    """Queued after a stream's last message: the subscription completes."""


class _Overflow:
    """Queued in place of everything when a subscriber fell behind: the subscription fails."""


_END = _End()
_OVERFLOW = _Overflow()


class Subscriber:
    """One live subscription: a bounded queue of messages of one stream."""

    def __init__(self, stream_id: str, queue_size: int) -> None:
        self.stream_id = stream_id
        self._queue: asyncio.Queue[ChatMessage | _End | _Overflow] = asyncio.Queue(queue_size)
        self.closed = False

    def offer(self, item: ChatMessage | _End) -> bool:
        """Queue without waiting; on overflow fail the subscription and return False."""
        if self.closed:
            return False
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # A slow reader must not hold the others up or grow memory: drop what it has
            # not read and tell it to resubscribe.
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(_OVERFLOW)
            self.closed = True
            return False
        if isinstance(item, _End):
            self.closed = True
        return True

    def __aiter__(self) -> AsyncIterator[ChatMessage]:
        return self

    async def __anext__(self) -> ChatMessage:
        item = await self._queue.get()
        if isinstance(item, _End):
            raise StopAsyncIteration
        if isinstance(item, _Overflow):
            raise SubscriberTooSlow()
        return item


class MessageHub:
    """Subscribers grouped by stream; ``publish`` hands each new message to its stream's group."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._queue_size = queue_size
        self._streams: dict[str, set[Subscriber]] = defaultdict(set)
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []

    @asynccontextmanager
    async def subscribe(self, stream_id: str) -> AsyncIterator[Subscriber]:
        """Register a subscriber for the duration of the block."""
        subscriber = Subscriber(stream_id, self._queue_size)
        self._streams[stream_id].add(subscriber)
        self._changed()
        try:
            yield subscriber
        finally:
            group = self._streams.get(stream_id)
            if group is not None:
                group.discard(subscriber)
                if not group:
                    del self._streams[stream_id]
            self._changed()

    def publish(self, message: ChatMessage) -> None:
        """Hand a new message to every subscriber of its stream."""
        for subscriber in tuple(self._streams.get(message.stream_id, ())):
            if not subscriber.offer(message):
                logger.warning("Closed a subscriber of stream %s that fell behind", message.stream_id)
                self._streams[message.stream_id].discard(subscriber)
                self._changed()

    def end_stream(self, stream_id: str) -> None:
        """Complete every subscription of a stream that has ended."""
        for subscriber in self._streams.pop(stream_id, set()):
            subscriber.offer(_END)
        self._changed()

    def subscriber_count(self, stream_id: str | None = None) -> int:
        """How many subscribers one stream (or every stream) has."""
        if stream_id is not None:
            return len(self._streams.get(stream_id, ()))
        return sum(len(group) for group in self._streams.values())

    async def wait_for_subscribers(self, stream_id: str, count: int) -> None:
        """Return once a stream has exactly ``count`` subscribers (for tests and tooling)."""
        if self.subscriber_count(stream_id) == count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((stream_id, count, future))
        try:
            await future
        finally:
            self._waiters = [w for w in self._waiters if w[2] is not future]

    def _changed(self) -> None:
        for stream_id, count, future in self._waiters:
            if not future.done() and self.subscriber_count(stream_id) == count:
                future.set_result(None)
