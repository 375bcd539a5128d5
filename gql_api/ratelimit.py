"""The per-user message rate limit, kept in MongoDB so that every API replica shares it.

A sliding log: for each (stream, user) one document holds the send times of the user's latest
``limit`` messages. A message is admitted while fewer than ``limit`` of them fall inside the
last ``window`` seconds, so no span of ``window`` seconds ever holds more than ``limit``
messages (a fixed-window counter lets twice the limit through across a window boundary).
Each entry also records the message's dedup key: a retry of a message that was admitted (its
client sent it again, perhaps concurrently, with the same ``clientMessageId``) is admitted
again without taking a slot.

Written here rather than taken from the ``limits`` package: its MongoDB storage talks through
Motor (this app uses pymongo's own async client) and updates with aggregation pipelines
(``$$NOW``, ``$cond``), which nx-27017 does not implement. The embedded server also rejects
``$not`` and cannot match array positions (``sent_at_ms.19``), so the log is written by
compare-and-swap on a version number, which both servers do atomically (the store's
``rate_window`` and ``swap_rate_windows``); the swaps of concurrent senders share one round
trip (``batching.Batcher``). Times come from each
replica's clock: replicas need synchronised clocks (NTP), as any shared window does.

Each process remembers the last window it read or wrote under each key and swaps against
it directly, so a send admitted by the replica that admitted the user's previous one takes
one round trip; a key it remembers nothing of is created at once (a user's first message in
a stream, one round trip too), and read only when it turns out to exist. A remembered
window is never trusted beyond the swap: one that another replica changed since fails its
swap, and the window is read again. A refusal from a remembered window is right as it is: a
stored window only ever holds newer entries than the ones remembered, so it is at least as
full.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from pymongo.errors import PyMongoError

from gql_api.batching import Batcher
from gql_api.errors import RateLimited
from gql_api.store import ChatStore, RateSwap, RateWindow

logger = logging.getLogger(__name__)


class MessageRateLimiter:
    """At most ``limit`` messages per ``window_seconds`` per user per stream (``limit=0`` is
    off), and, per call, at least ``min_interval_seconds`` between two of them (slow mode)."""

    def __init__(
        self,
        limit: int,
        window_seconds: int,
        *,
        store: ChatStore,
        clock: Callable[[], float] = time.time,
        remembered: int = 10_000,
    ) -> None:
        self.store = store
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock
        self._capacity = remembered
        # The last window this process read or wrote under each key, most recent last.
        self._windows: OrderedDict[str, RateWindow] = OrderedDict()
        # Concurrent senders' swaps, in one stream or many, share round trips.
        self._swaps: Batcher[RateSwap, bool] = Batcher(self._swap, name="rate-windows")

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    async def acquire(self, stream_id: str, user_id: str, dedup_key: str, min_interval_seconds: int = 0) -> int | None:
        """Count one message of ``user_id`` in ``stream_id``; RateLimited when over the limit,
        or, with ``min_interval_seconds`` (a stream's slow mode), when the user's previous
        message is more recent than that. One compare-and-swap on the same window enforces
        both, and slow mode holds with the limit off too.

        ``dedup_key`` names the message: one that is in the log already is admitted again
        and not counted twice. Returns when the user's previous message was counted (epoch
        milliseconds; None when there was none, or nothing was counted), so a slow mode
        turned on meanwhile can be held to later.
        """
        if not self.enabled and min_interval_seconds <= 0:
            return None
        key = f"{stream_id}:{user_id}"
        window_ms = self.window_seconds * 1000
        interval_ms = max(min_interval_seconds, 0) * 1000
        # Each lost swap means another message of this same user took a slot (or a retry of
        # this one did), so within `limit` rounds the log is full or holds this message.
        window = self._windows.get(key)
        # Nothing remembered: most often the user's first message in the stream, so the window
        # is created at once, and read only if it turns out to exist.
        state = "remembered" if window is not None else "create"
        for _ in range(max(self.limit, 1) + 3):  # a round more for a stale window, one for the creation
            now_ms = int(self._clock() * 1000)
            if state == "read":
                window = await self.store.rate_window(key)
            state = "read"
            entries = window.entries if window is not None else []
            if any(k == dedup_key for _, k in entries):
                return None  # a retry of an admitted message: it has its slot
            # The log holds the newest message whatever the window: it is the last one written.
            newest = max((t for t, _ in entries), default=None)
            if interval_ms and newest is not None and newest + interval_ms > now_ms:
                raise self.slow_mode_refusal(min_interval_seconds, newest + interval_ms - now_ms)
            recent: list[tuple[int, str]] = []
            if self.enabled:
                recent = sorted((e for e in entries if e[0] > now_ms - window_ms), reverse=True)
                if len(recent) >= self.limit:
                    raise self._refusal(recent[self.limit - 1][0] + window_ms - now_ms)
            log = [(now_ms, dedup_key), *recent]
            # Version 0: no window was stored, and this creates it.
            version = window.version if window is not None else 0
            if await self._swaps.submit(RateSwap(key, stream_id, version, log)):
                self._remember(key, RateWindow(log, version + 1))
                return newest
            # The window changed meanwhile (another message of this user, or a retry of this
            # one), or exists already where none was expected: read it and count again.
        raise self._refusal(1000)  # pragma: no cover - only a flood of parallel sends gets here

    async def _swap(self, swaps: list[RateSwap]) -> list[bool]:
        return await self.store.swap_rate_windows(swaps)

    def _remember(self, key: str, window: RateWindow) -> None:
        self._windows[key] = window
        self._windows.move_to_end(key)
        if len(self._windows) > self._capacity:
            self._windows.popitem(last=False)

    async def forget(self, stream_id: str) -> None:
        """Drop a stream's counters (it has ended, so no one can send to it any more)."""
        prefix = f"{stream_id}:"
        for key in [key for key in self._windows if key.startswith(prefix)]:
            del self._windows[key]
        try:
            await self.store.drop_rate_windows(stream_id)
        except PyMongoError as exc:  # leftovers are harmless: the stream takes no more messages
            logger.warning("Could not drop the rate counters of stream %s: %r", stream_id, exc)

    def _refusal(self, wait_ms: int) -> RateLimited:
        retry_after = max(1, math.ceil(wait_ms / 1000))
        return RateLimited(
            f"Rate limit exceeded: at most {self.limit} messages per {self.window_seconds} seconds "
            f"in a stream; try again in {retry_after} s",
            retry_after=retry_after,
        )

    @staticmethod
    def slow_mode_refusal(interval_seconds: int, wait_ms: int) -> RateLimited:
        retry_after = max(1, math.ceil(wait_ms / 1000))
        return RateLimited(
            f"Rate limit exceeded: slow mode is on, one message every {interval_seconds} seconds "
            f"in this stream; try again in {retry_after} s",
            retry_after=retry_after,
        )
