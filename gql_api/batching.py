"""Group commit of independent operations: the ones asked for while a round trip is in flight
go together in the next, so concurrent callers share round trips instead of taking one each.

Used for the rate windows' compare-and-swaps (``ratelimit``) and for lone log entries of
different streams (``service``): each caller learns its own outcome, in the order it asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# The most items one round trip carries.
MAX_BATCH = 256


class Batcher(Generic[T, R]):
    """Calls ``write`` with every item submitted meanwhile; ``write`` returns one outcome per
    item, in order (an exception fails the whole batch)."""

    def __init__(
        self, write: Callable[[list[T]], Awaitable[list[R]]], *, name: str, max_batch: int = MAX_BATCH
    ) -> None:
        self._write = write
        self._name = name
        self._max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """The outcome of ``item``, written with whatever else is waiting."""
        outcome: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, outcome))
        if self._writer is None:
            self._writer = asyncio.create_task(self._run(), name=self._name)
        # The write goes on when the caller goes away (as ``store.detached`` operations do).
        return await asyncio.shield(outcome)

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                try:
                    results = await self._write([item for item, _ in batch])
                except BaseException as exc:
                    for _, outcome in batch:
                        if not outcome.done():
                            outcome.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, outcome), result in zip(batch, results, strict=True):
                    if not outcome.done():
                        outcome.set_result(result)
        finally:
            self._writer = None
            for _, outcome in self._waiting:  # only when cancelled (at shutdown)
                outcome.cancel()
            self._waiting.clear()
