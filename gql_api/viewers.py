"""Viewer counts: a stream's live subscribers across every replica (``LiveStream.viewerCount``).

Each replica (one app's lifespan, see ``state.open_services``) has an id and runs one
``ReplicaPresence`` task. Every ``VIEWER_COUNT_INTERVAL_SECONDS`` it

1. publishes its own subscribers per stream (``MessageHub.subscriber_counts``) as one
   ``documents.ViewerPresence`` document, valid for ``PRESENCE_INTERVALS`` intervals: it writes
   only when the counts changed or are about to expire, and deletes the document when it has no
   subscribers left (an idle replica writes nothing);
2. reads every replica's presence (one small document each), sums the unexpired ones per
   stream, with its own current counts in place of its own document, and hands the totals to
   ``ViewerCounts``; presences found expired are deleted (their replica died).

So a total is at most one interval old, changes at most once per interval per stream, and a
replica that dies without deleting its presence stops counting once it expires: within
``PRESENCE_INTERVALS + 1`` intervals (20 s at the default 5 s, 30 s at the 7.5 s maximum).
Expiry times are compared with each reader's clock: keep replicas' clocks in sync (NTP) to
within a few seconds. On a clean shutdown the replica deletes its presence at once.

For the typed event stream (``ViewerCountChanged``): ``ViewerCounts.changes(stream_id)`` yields
a stream's current total and then each new total, which by construction comes at most once per
interval; each subscription can iterate it and emit one event per value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping

from pymongo.errors import PyMongoError

from gql_api.documents import ChatMessage
from gql_api.hub import MessageHub
from gql_api.store import ChatStore

logger = logging.getLogger(__name__)

# A presence is valid this many intervals after it is written, and rewritten when less than
# REFRESH_MARGIN intervals of it remain: one missed or late round does not drop a replica.
PRESENCE_INTERVALS = 3
REFRESH_MARGIN = 1.5


def replica_id() -> str:
    """A new id for this replica: host and pid for the operator, and a random part, as one
    process may run several apps (tests do)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class ViewerCounts:
    """The latest total of live subscribers per stream across replicas, as this replica knows it.

    Written by ``ReplicaPresence`` once per interval; read by ``LiveStream.viewerCount`` and
    watched, per stream, through ``changes``.
    """

    def __init__(self) -> None:
        self._totals: dict[str, int] = {}
        # One event per watched stream, set and replaced when its total changes.
        self._changed: dict[str, asyncio.Event] = {}

    def total(self, stream_id: str) -> int:
        """The stream's live subscribers on every replica (0 for a stream nobody watches)."""
        return self._totals.get(stream_id, 0)

    def update(self, totals: Mapping[str, int]) -> set[str]:
        """Replace every total (streams left out have none); wake the watchers of those that
        changed, and return their ids."""
        changed = {s for s in self._totals.keys() | totals.keys() if self._totals.get(s, 0) != totals.get(s, 0)}
        self._totals = {stream_id: total for stream_id, total in totals.items() if total > 0}
        for stream_id in changed:
            if (event := self._changed.pop(stream_id, None)) is not None:
                event.set()
        return changed

    async def changes(self, stream_id: str) -> AsyncIterator[int]:
        """The stream's total now, then each new total as it changes (at most once per interval).

        A consumer slower than the changes skips the totals it missed and gets the newest.
        """
        last: int | None = None
        while True:
            total = self.total(stream_id)
            if total != last:
                last = total
                yield total
                continue  # the total may have changed while the consumer held the value
            event = self._changed.get(stream_id)
            if event is None:
                event = self._changed[stream_id] = asyncio.Event()
            await event.wait()

    async def wait_for(self, stream_id: str, total: int) -> None:
        """Return once the stream's total is ``total`` (for tests and tooling)."""
        async for current in self.changes(stream_id):
            if current == total:
                return


class ReplicaPresence:
    """This replica's part in the viewer counts: publish its subscribers, read everyone's.

    ``clock`` (epoch seconds) is injectable so that expiry can be tested without waiting.
    """

    def __init__(
        self,
        store: ChatStore,
        hub: MessageHub[ChatMessage],
        viewers: ViewerCounts,
        *,
        interval_seconds: float,
        replica: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hub = hub
        self.viewers = viewers
        self.interval = interval_seconds
        self.replica_id = replica or replica_id()
        self._clock = clock
        self._published: dict[str, int] = {}
        self._expires_at = 0.0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run a round now and then every interval, until ``stop``."""
        self._task = asyncio.create_task(self._run(), name=f"viewer-presence:{self.replica_id}")

    async def stop(self) -> None:
        """Let the current round finish (a round cancelled mid-write could land after the
        delete), then delete this replica's presence.

        Bounded by the presence's lifetime: past it the presence has expired anyway, so a
        database that does not answer does not hold the shutdown up any longer.
        """
        self._stopping.set()
        try:
            async with asyncio.timeout(PRESENCE_INTERVALS * self.interval):
                if self._task is not None:
                    await asyncio.shield(self._task)
                if self._published:
                    await self.store.drop_presence(self.replica_id)
        except (TimeoutError, PyMongoError) as exc:
            logger.warning("Could not delete this replica's viewer presence (it will expire): %r", exc)
        finally:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def refresh(self) -> None:
        """One round: publish this replica's counts if needed, then update the totals."""
        now = self._clock()
        counts = self.hub.subscriber_counts()
        await self._publish(counts, now)
        totals: Counter[str] = Counter(counts)
        expired = False
        for presence in await self.store.presences():
            if presence.id == self.replica_id:
                continue  # its own counts are the ones just read from the hub
            if presence.expires_at_ms > _ms(now):
                totals.update(presence.counts)
            else:
                expired = True
        if expired:
            await self.store.drop_expired_presences(_ms(now))
        self.viewers.update(totals)

    async def _publish(self, counts: dict[str, int], now: float) -> None:
        if counts == self._published and (not counts or now < self._expires_at - REFRESH_MARGIN * self.interval):
            return
        if counts:
            expires_at = now + PRESENCE_INTERVALS * self.interval
            await self.store.put_presence(self.replica_id, counts, _ms(expires_at))
            self._expires_at = expires_at
        else:
            await self.store.drop_presence(self.replica_id)
        self._published = counts

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.refresh()
            except PyMongoError as exc:
                # The database is away: the totals stay as they were until it is back.
                logger.warning("Could not refresh viewer counts: %r", exc)
            except Exception:
                logger.exception("Unexpected error while refreshing viewer counts")
            with contextlib.suppress(TimeoutError):  # the next round is due
                await asyncio.wait_for(self._stopping.wait(), self.interval)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
