"""Group commit of independent operations: the ones asked for while a round trip is in flight
go together in the next, so concurrent callers share round trips instead of taking one each.

Used for lone log entries of different streams (``service``): each caller learns its own
outcome.
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
    item, in order (an exception fails the whole batch).

    With ``in_flight`` above 1, that many writes may run at once: an item submitted while
    fewer are running starts one, and a write that ends takes whatever is waiting. Only for
    items that may be written in any order relative to each other.
    """

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[list[R]]],
        *,
        name: str,
        max_batch: int = MAX_BATCH,
        in_flight: int = 1,
    ) -> None:
        self._write = write
        self._name = name
        self._max_batch = max_batch
        self._in_flight = in_flight
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writers: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """The outcome of ``item``, written with whatever else is waiting."""
        outcome: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, outcome))
        if len(self._writers) < self._in_flight:
            self._writers.add(asyncio.create_task(self._run(), name=self._name))
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
        except asyncio.CancelledError:  # only at shutdown
            for _, outcome in self._waiting:
                outcome.cancel()
            self._waiting.clear()
            raise
        finally:
            # At once, not in a done callback: an item submitted from now on starts a writer.
            self._writers.discard(asyncio.current_task())
