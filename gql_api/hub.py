"""The live-message hub: one group per stream with subscribers in this process, fed new messages.

Each group remembers the sequence number it delivered last and hands its subscribers every
message exactly once, in sequence order: a message it has already delivered is dropped, and a
message that skips ahead first pulls the ones it skipped from the stored history. So whatever
feeds the hub (a change stream that resumed after an outage, or in-process calls that race) the
subscribers see no gap and no duplicate.

A stream's end is an entry of the same log (``MessageKind.STREAM_ENDED``), numbered after its
last message: the group completes its subscriptions when it reaches that entry in order, so
every message before the end has been handed over first.

The hub reads the stored log through a ``HistoryReader`` it is given (``store.ChatStore`` in
the app), and needs of an entry only its stream, sequence number and kind (``LogEntry``): the
ordering and gap filling run without a database.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Generic, Literal, Protocol, TypeVar

from gql_api.documents import MessageKind
from gql_api.errors import ServiceUnavailable, SubscriberTooSlow
from gql_api.metrics import Metrics

logger = logging.getLogger(__name__)


class LogEntry(Protocol):
    """What the hub reads of an entry of a stream's log (``documents.ChatMessage`` is one)."""

    @property
    def stream_id(self) -> str: ...

    @property
    def seq(self) -> int: ...

    @property
    def kind(self) -> MessageKind: ...


EntryT = TypeVar("EntryT", bound=LogEntry)
EntryT_co = TypeVar("EntryT_co", bound=LogEntry, covariant=True)


class HistoryReader(Protocol[EntryT_co]):
    """The stored log of each stream, as the hub reads it."""

    async def newest(self, stream_id: str) -> EntryT_co | None:
        """The stream's newest entry (its end entry once it has ended); None when it has none."""
        ...

    def replay(
        self, stream_id: str, *, after: int, through: int | None = None, every_kind: bool = False
    ) -> AsyncIterator[EntryT_co]:
        """Entries with ``after < seq <= through`` (or to the newest), oldest first: the
        messages, or with ``every_kind`` every entry (moderation events and the end too)."""
        ...


class _Signal(enum.Enum):
    """What a subscriber's queue holds besides entries. Compared by identity: an entry may be a
    lazily parsed document, whose every attribute read (``__class__`` for ``isinstance``
    included) goes through its parser, once per subscriber and message."""

    #: Queued after a stream's last message: the subscription completes.
    END = "end"
    #: Queued in place of everything when a subscriber fell behind: the subscription fails.
    OVERFLOW = "overflow"


class Subscriber(Generic[EntryT]):
    """One live subscription: a bounded queue of one stream's messages.

    ``start_seq`` is the sequence number its group had delivered when it joined: it receives
    every later message, and can replay anything up to ``start_seq`` from history.

    The queue is a list (a live subscription's is nearly always empty: an empty list holds no
    storage, where a deque keeps a 0.5 KiB block) and, only while its reader waits, one future:
    an idle subscription holds about 3.5 KiB less than with an ``asyncio.Queue`` (three deques
    and an event), and a delivery wakes the reader without its bookkeeping. One reader at a time.
    """

    __slots__ = ("_items", "_size", "_waiter", "closed", "listener", "start_seq", "stream_id")

    def __init__(self, stream_id: str, queue_size: int, start_seq: int) -> None:
        self.stream_id = stream_id
        self.start_seq = start_seq
        self.closed = False
        #: Takes an entry that arrives while the reader waits on an empty queue, in the
        #: delivery's own pass: True when it dealt with the entry (sent it, or had nothing to
        #: send), which is then never queued; False to have it queued as usual. It must not
        #: wait or raise. So a live subscription's entries are written without waking its task.
        self.listener: Callable[[EntryT], bool] | None = None
        self._items: list[EntryT | _Signal] = []
        self._size = queue_size
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, item: EntryT | Literal[_Signal.END]) -> bool:
        """Queue without waiting; on overflow fail the subscription and return False."""
        if self.closed:
            return False
        listener = self.listener
        if listener is not None and self._waiter is not None and not self._items and item is not _Signal.END:
            # The reader is parked with nothing queued: nothing sent before this entry is still
            # on its way, so handing it over here keeps the order.
            try:
                if listener(item):
                    return True
            except Exception:  # a bug: the queue's path below still delivers it, or fails it
                logger.exception("A live listener of stream %s failed", self.stream_id)
                self.listener = None
        if len(self._items) >= self._size:
            # A slow reader must not hold the others up or grow memory: drop what it has not
            # read and tell it to resubscribe with `after`.
            self._items.clear()
            self._put(_Signal.OVERFLOW)
            self.closed = True
            return False
        self._put(item)
        if item is _Signal.END:
            self.closed = True
        return True

    def _put(self, item: EntryT | _Signal) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> AsyncIterator[EntryT]:
        return self

    async def __anext__(self) -> EntryT:
        items = self._items
        while not items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        item = items.pop(0)  # short: a backlog longer than a few items is the exception
        if item is _Signal.END:
            raise StopAsyncIteration
        if item is _Signal.OVERFLOW:
            raise SubscriberTooSlow()
        return item


class Feed(Generic[EntryT]):
    """A subscription's entries as an async iterator (an async generator's), whose consumer may
    also take the live ones in the delivery's own pass: see :meth:`listen`.

    The generator reads :attr:`consumer` when it starts its live phase, and hands it to its
    :class:`Subscriber` as the listener (with its own filtering in front).
    """

    __slots__ = ("_entries", "consumer")

    def __init__(self) -> None:
        #: What :meth:`listen` was given; None to take every entry through the iterator.
        self.consumer: Callable[[EntryT], bool] | None = None
        self._entries: AsyncGenerator[EntryT, None] | None = None

    def start(self, entries: AsyncGenerator[EntryT, None]) -> Feed[EntryT]:
        """Iterate ``entries`` (a generator that was given this feed, to read ``consumer``)."""
        self._entries = entries
        return self

    def listen(self, consumer: Callable[[EntryT], bool]) -> None:
        """Have ``consumer`` take live entries that arrive while the iterator's reader waits,
        synchronously: True when it sent the entry, False to have it come through the iterator
        instead (it could not send without waiting). Call before iterating. ``consumer`` must
        not raise or wait, and sees exactly the entries the iterator would yield, in order."""
        self.consumer = consumer

    def __aiter__(self) -> Feed[EntryT]:
        return self

    def __anext__(self) -> Awaitable[EntryT]:
        assert self._entries is not None, "Feed.start was not called"
        return self._entries.__anext__()

    async def aclose(self) -> None:
        """Stop the generator (leaving the hub) now."""
        if self._entries is not None:
            await self._entries.aclose()


class Membership(Generic[EntryT]):
    """``MessageHub.subscribe``'s block: the subscriber is in its stream's group inside it.

    A class rather than a generator-based context manager: an idle subscription keeps it for its
    whole life, and the generator's frame, its wrapper and the event loop's record of a live
    async generator were about 0.6 KiB more.
    """

    __slots__ = ("_group", "_hub", "_stream_id", "_subscriber")

    def __init__(self, hub: MessageHub[EntryT], stream_id: str) -> None:
        self._hub = hub
        self._stream_id = stream_id
        self._group: _Group[EntryT] | None = None
        self._subscriber: Subscriber[EntryT] | None = None

    async def __aenter__(self) -> Subscriber[EntryT]:
        hub = self._hub
        group = self._group = await hub._group(self._stream_id)
        subscriber = self._subscriber = Subscriber(self._stream_id, hub._queue_size, group.last_seq)
        if group.ended:
            subscriber.offer(_Signal.END)
        else:
            group.subscribers.add(subscriber)
        hub._changed()
        return subscriber

    async def __aexit__(self, *exc_info: object) -> None:
        if self._group is not None and self._subscriber is not None:
            self._hub._leave(self._group, self._subscriber)


class _Group(Generic[EntryT]):
    """The subscribers of one stream in this process, and how far the stream was delivered."""

    def __init__(self, stream_id: str, history: HistoryReader[EntryT], metrics: Metrics) -> None:
        self.stream_id = stream_id
        self.history = history
        self.metrics = metrics
        self.subscribers: set[Subscriber[EntryT]] = set()
        self.last_seq = 0
        self.ended = False
        # Messages deleted after they were handed over: still in a queue, but not to be sent.
        self.deleted: set[int] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lock = asyncio.Lock()  # one delivery (with its catch-up reads) at a time

    def fan_out(self, message: EntryT) -> list[Subscriber[EntryT]]:
        """Hand a message to every subscriber; return those that fell behind.

        The stream's end entry completes every subscription instead, and ends the group.
        """
        self.last_seq = message.seq
        if message.kind is MessageKind.STREAM_ENDED:
            self.ended = True
            for subscriber in tuple(self.subscribers):
                subscriber.offer(_Signal.END)
            self.subscribers.clear()
            return []
        behind = [s for s in tuple(self.subscribers) if not s.offer(message)]
        self.metrics.deliveries.inc(len(self.subscribers) - len(behind))
        return behind

    async def catch_up(self, through: int | None = None) -> list[Subscriber[EntryT]]:
        """Deliver stored entries after ``last_seq`` (up to ``through``) that the feed skipped."""
        dropped: list[Subscriber[EntryT]] = []
        async for message in self.history.replay(self.stream_id, after=self.last_seq, through=through, every_kind=True):
            if self.ended:
                break
            dropped += self.fan_out(message)
        return dropped


class MessageHub(Generic[EntryT]):
    """Groups of subscribers by stream; fed by a ``Delivery`` with each new entry of a stream's log.

    ``history`` is where a group reads where its stream stands when it starts, and the entries
    a feed skipped.
    """

    def __init__(self, history: HistoryReader[EntryT], queue_size: int = 1000, metrics: Metrics | None = None) -> None:
        self._history = history
        self._queue_size = queue_size
        self.metrics = metrics or Metrics()
        self._groups: dict[str, _Group[EntryT]] = {}
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []

    def subscribe(self, stream_id: str) -> Membership[EntryT]:
        """Join the stream's group for the duration of an ``async with`` block, which gives the
        :class:`Subscriber`.

        The subscriber of a stream that has ended (its end entry is delivered or stored) is
        complete at once: it only replays from history.
        """
        return Membership(self, stream_id)

    async def deliver(self, message: EntryT) -> None:
        """Hand a new entry to its stream's subscribers, once each, in sequence order.

        A message is queued to each subscriber; the end entry completes them all.
        """
        group = self._groups.get(message.stream_id)
        if group is None or not await self._is_ready(group):
            return
        async with group.lock:
            if message.seq <= group.last_seq or group.ended:
                return  # delivered already (a resumed feed repeats itself)
            # Read the log only for what the feed skipped: in sequence, nothing was.
            skipped = message.seq > group.last_seq + 1
            dropped = await group.catch_up(through=message.seq - 1) if skipped else []
            if not group.ended:
                dropped += group.fan_out(message)
        self._settle(group, dropped)

    def message_deleted(self, stream_id: str, seq: int) -> None:
        """Note that a stream's message was deleted, so ``is_deleted`` holds it back from the
        subscribers that have it queued but not yet sent.

        Kept only while the stream has subscribers here, and only for the numbers a queue can
        still hold (the newest ``queue_size`` delivered, or not yet delivered): anything older
        has been sent or its subscriber dropped.
        """
        group = self._groups.get(stream_id)
        if group is None:
            return
        oldest_queued = group.last_seq - self._queue_size
        if seq > oldest_queued:
            group.deleted = {s for s in group.deleted if s > oldest_queued}
            group.deleted.add(seq)

    def is_deleted(self, stream_id: str, seq: int) -> bool:
        """Whether the stream's message was reported deleted (``message_deleted``) here."""
        group = self._groups.get(stream_id)
        return group is not None and seq in group.deleted

    async def resync(self) -> None:
        """Deliver whatever was stored while the feed was down (ends included), to every group."""
        for group in tuple(self._groups.values()):
            if not await self._is_ready(group):
                continue
            async with group.lock:
                dropped = [] if group.ended else await group.catch_up()
            self._settle(group, dropped)

    def follows(self, stream_id: str) -> bool:
        """Whether the stream has subscribers in this process (or some are joining): ``deliver``
        does nothing for any other."""
        return stream_id in self._groups

    def subscriber_count(self, stream_id: str | None = None) -> int:
        """How many subscribers one stream (or every stream) has in this process."""
        if stream_id is not None:
            group = self._groups.get(stream_id)
            return len(group.subscribers) if group else 0
        return sum(len(group.subscribers) for group in self._groups.values())

    def subscriber_counts(self) -> dict[str, int]:
        """How many subscribers each stream that has any has in this process."""
        return {stream_id: len(group.subscribers) for stream_id, group in self._groups.items() if group.subscribers}

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

    # -- internals -------------------------------------------------------------------------

    async def _group(self, stream_id: str) -> _Group[EntryT]:
        group = self._groups.get(stream_id)
        if group is None:
            group = self._groups[stream_id] = _Group(stream_id, self._history, self.metrics)
            try:
                newest = await self._history.newest(stream_id)
            except BaseException as exc:
                del self._groups[stream_id]
                # Joiners waiting on this group fail too; a cancelled creator is not their cancel.
                failure = exc if isinstance(exc, Exception) else ServiceUnavailable()
                group.ready.set_exception(failure)
                group.ready.exception()  # mark it retrieved: the joiners re-raise it themselves
                raise
            if newest is not None:
                group.last_seq = newest.seq
                group.ended = newest.kind is MessageKind.STREAM_ENDED
            group.ready.set_result(None)
        else:
            await asyncio.shield(group.ready)
        return group

    @staticmethod
    async def _is_ready(group: _Group[Any]) -> bool:
        try:
            await asyncio.shield(group.ready)
        except Exception:  # noqa: BLE001 - the group never started; its joiners were told
            return False
        return True

    def _leave(self, group: _Group[EntryT], subscriber: Subscriber[EntryT]) -> None:
        group.subscribers.discard(subscriber)
        if not group.subscribers and self._groups.get(group.stream_id) is group:
            del self._groups[group.stream_id]
        self._changed()

    def _drop(self, group: _Group[EntryT], subscribers: list[Subscriber[EntryT]]) -> None:
        self.metrics.slow_subscribers_dropped.inc(len(set(subscribers)))  # one catch-up may list one twice
        for subscriber in subscribers:
            logger.warning("Closed a subscriber of stream %s that fell behind", group.stream_id)
            self._leave(group, subscriber)

    def _settle(self, group: _Group[EntryT], dropped: list[Subscriber[EntryT]]) -> None:
        """After a delivery: close who fell behind, and forget a group whose stream ended."""
        self._drop(group, dropped)
        if group.ended:
            if self._groups.get(group.stream_id) is group:
                del self._groups[group.stream_id]
            self._changed()

    def _changed(self) -> None:
        for stream_id, count, future in self._waiters:
            if not future.done() and self.subscriber_count(stream_id) == count:
                future.set_result(None)
