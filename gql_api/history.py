"""Reading a stream's stored log by sequence number: pages, ranges, the newest entry, counts.

A stream's log holds its messages and, once it has ended, one STREAM_ENDED entry after the last
of them. Pages and replays show messages only; the hub asks for the end entry too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pymongo import ASCENDING, DESCENDING

from gql_api.compat import count_matching, eq
from gql_api.database import detached
from gql_api.documents import VISIBLE_KINDS, ChatMessage, MessageKind

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


async def _read(
    stream_id: str, seq: dict[str, int], *, limit: int, newest_first: bool
) -> list[ChatMessage]:
    query = ChatMessage.find(_filter(stream_id, seq))
    query = query.sort([("seq", DESCENDING if newest_first else ASCENDING)]).limit(limit)
    return await detached(query.to_list())


async def read_window(
    stream_id: str,
    *,
    after: int | None,
    before: int | None,
    limit: int,
    newest_first: bool,
) -> list[ChatMessage]:
    """Up to ``limit`` messages with ``after < seq < before``, from the chosen end, in that order.

    The end entry is left out here rather than in the query, so the query keeps to the
    (stream_id, seq) index: there is at most one, so one row more than asked for is enough.
    """
    rows = await _read(stream_id, _window(after, before), limit=limit + 1, newest_first=newest_first)
    return [row for row in rows if row.kind in VISIBLE_KINDS][:limit]


async def exists(stream_id: str, seq: dict[str, int]) -> bool:
    """Whether any message (not the end entry) of the stream has a sequence number in ``seq``."""
    rows = await _read(stream_id, seq, limit=2, newest_first=False)
    return any(row.kind in VISIBLE_KINDS for row in rows)


async def newest(stream_id: str) -> ChatMessage | None:
    """The newest entry of the stream's log (its end entry once it has ended); None when empty."""
    [entry] = await _read(stream_id, {}, limit=1, newest_first=True) or [None]
    return entry


async def replay(
    stream_id: str, *, after: int, through: int | None = None, with_end: bool = False
) -> AsyncIterator[ChatMessage]:
    """Every message with ``after < seq <= through`` (or to the newest), oldest first, in batches.

    With ``with_end`` the stream's end entry comes too, last.
    """
    before = through + 1 if through is not None else None
    while True:
        batch = await _read(stream_id, _window(after, before), limit=REPLAY_BATCH, newest_first=False)
        for message in batch:
            if with_end or message.kind in VISIBLE_KINDS:
                yield message
        if len(batch) < REPLAY_BATCH:
            return
        after = batch[-1].seq


async def superlike_count(stream_id: str) -> int:
    """How many superlikes the stream has: counted from the stored messages, so never adrift."""
    condition = {"stream_id": eq(stream_id), "kind": eq(MessageKind.SUPERLIKE.value)}
    return await detached(count_matching(ChatMessage.get_pymongo_collection(), condition))
