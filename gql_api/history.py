"""Reading a stream's stored messages by sequence number: pages, ranges and the newest position."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pymongo import ASCENDING, DESCENDING

from gql_api.compat import eq
from gql_api.database import detached
from gql_api.documents import ChatMessage

REPLAY_BATCH = 100


def _filter(stream_id: str, seq: dict[str, int] | None = None) -> dict[str, Any]:
    condition: dict[str, Any] = {"stream_id": eq(stream_id)}
    if seq:
        condition["seq"] = seq
    return condition


def _window(after: int | None, before: int | None) -> dict[str, int]:
    window: dict[str, int] = {}
    if after is not None:
        window["$gt"] = after
    if before is not None:
        window["$lt"] = before
    return window


async def read_window(
    stream_id: str, *, after: int | None, before: int | None, limit: int, newest_first: bool
) -> list[ChatMessage]:
    """Up to ``limit`` messages with ``after < seq < before``, from the chosen end, in that order."""
    query = ChatMessage.find(_filter(stream_id, _window(after, before)))
    query = query.sort([("seq", DESCENDING if newest_first else ASCENDING)]).limit(limit)
    return await detached(query.to_list())


async def exists(stream_id: str, seq: dict[str, int]) -> bool:
    """Whether any message of the stream has a sequence number matching ``seq``."""
    return await detached(ChatMessage.find_one(_filter(stream_id, seq))) is not None


async def latest_seq(stream_id: str) -> int:
    """The sequence number of the stream's newest message; 0 when it has none."""
    [newest] = await read_window(stream_id, after=None, before=None, limit=1, newest_first=True) or [None]
    return newest.seq if newest is not None else 0


async def replay(stream_id: str, *, after: int, through: int | None = None) -> AsyncIterator[ChatMessage]:
    """Every message with ``after < seq <= through`` (or to the newest), oldest first, in batches."""
    before = through + 1 if through is not None else None
    while True:
        batch = await read_window(stream_id, after=after, before=before, limit=REPLAY_BATCH, newest_first=False)
        for message in batch:
            yield message
        if len(batch) < REPLAY_BATCH:
            return
        after = batch[-1].seq
