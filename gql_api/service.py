"""The domain rules of live-stream chat, shared by the GraphQL and REST front ends."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from gql_api.compat import eq, parse_object_id
from gql_api.documents import ChatMessage, LiveStream, MessageKind, StreamStatus, User, utcnow
from gql_api.errors import BadUserInput, Conflict, Forbidden, NotFound
from gql_api.hub import MessageHub
from gql_api.pagination import Page, PageRequest
from gql_api.ratelimit import MessageRateLimiter

logger = logging.getLogger(__name__)

MAX_CONTENT_LENGTH = 500
MAX_CLIENT_MESSAGE_ID_LENGTH = 64
MAX_TITLE_LENGTH = 200


def _require_length(field: str, value: str, maximum: int) -> str:
    value = value.strip()
    if not 1 <= len(value) <= maximum:
        raise BadUserInput(
            f"Validation failed: `{field}` must be 1 to {maximum} characters after trimming",
            details=[f"{field}: must be 1 to {maximum} characters after trimming"],
        )
    return value


class ChatService:
    """Streams and their messages: every rule about who may send what, and when."""

    def __init__(self, hub: MessageHub, rate_limiter: MessageRateLimiter | None = None) -> None:
        self.hub = hub
        self.rate_limiter = rate_limiter or MessageRateLimiter(0, 1)

    # -- streams ---------------------------------------------------------------------------

    async def get_stream(self, stream_id: str) -> LiveStream:
        """The stream with this id; NotFound when there is none."""
        object_id = parse_object_id(stream_id)
        stream = await LiveStream.get(object_id) if object_id is not None else None
        if stream is None:
            raise NotFound("Resource not found: no live stream has this id")
        return stream

    async def find_stream(self, stream_id: str) -> LiveStream | None:
        """The stream with this id, or None."""
        try:
            return await self.get_stream(stream_id)
        except NotFound:
            return None

    async def create_stream(self, owner: User, title: str) -> LiveStream:
        """A new LIVE stream owned by ``owner``."""
        stream = LiveStream(
            title=_require_length("title", title, MAX_TITLE_LENGTH), owner=owner.public_profile()
        )
        await stream.insert()
        return stream

    async def end_stream(self, user: User, stream_id: str) -> LiveStream:
        """End a LIVE stream (its owner only) and complete its subscriptions."""
        stream = await self.get_stream(stream_id)
        if stream.owner.id != str(user.id):
            raise Forbidden("Insufficient permissions: only the stream's owner can end it")
        raw = await LiveStream.get_pymongo_collection().find_one_and_update(
            {"_id": stream.id, "status": eq(StreamStatus.LIVE.value)},
            {"$set": {"status": StreamStatus.ENDED.value, "ended_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )
        if raw is None:
            raise Conflict("Resource cannot be changed in its current state: the stream has already ended")
        self.hub.end_stream(stream_id)
        await self.rate_limiter.forget(stream_id)
        return LiveStream.model_validate(raw)

    # -- messages --------------------------------------------------------------------------

    async def send_message(
        self, sender: User, stream_id: str, content: str, client_message_id: str | None = None
    ) -> ChatMessage:
        """Append a TEXT message; a retry with the same ``client_message_id`` returns the original.

        Counts against the sender's rate limit in the stream (not the owner's, and not a retry
        that returns the original); superlikes do not count, as there is one per user anyway.
        """
        content = _require_length("content", content, MAX_CONTENT_LENGTH)
        if client_message_id is None:
            await self._admit(sender, stream_id)
            return await self._append(sender, stream_id, MessageKind.TEXT, content, None, f"r:{ObjectId()}")
        if not 1 <= len(client_message_id) <= MAX_CLIENT_MESSAGE_ID_LENGTH:
            raise BadUserInput(
                f"Validation failed: `clientMessageId` must be 1 to {MAX_CLIENT_MESSAGE_ID_LENGTH} characters",
                details=[f"clientMessageId: must be 1 to {MAX_CLIENT_MESSAGE_ID_LENGTH} characters"],
            )
        dedup_key = f"c:{sender.id}:{client_message_id}"
        for attempt in range(2):
            existing = await self._find_by_dedup_key(stream_id, dedup_key)
            if existing is not None:
                if existing.content != content:
                    raise Conflict(
                        "Resource already exists: this clientMessageId was used for other content"
                    )
                return existing
            if attempt == 0:
                await self._admit(sender, stream_id)
            try:
                return await self._append(
                    sender, stream_id, MessageKind.TEXT, content, client_message_id, dedup_key
                )
            except DuplicateKeyError:
                continue  # a concurrent retry won the race: read its message
        raise Conflict("Resource already exists: this clientMessageId is being used")  # pragma: no cover

    async def send_superlike(self, sender: User, stream_id: str) -> ChatMessage:
        """Append the sender's one SUPERLIKE of this stream and count it."""
        try:
            message = await self._append(
                sender, stream_id, MessageKind.SUPERLIKE, "", None, f"s:{sender.id}"
            )
        except DuplicateKeyError as exc:
            raise Conflict("Resource already exists: you have already superliked this stream") from exc
        await LiveStream.get_pymongo_collection().update_one(
            {"_id": ObjectId(stream_id)}, {"$inc": {"superlike_count": 1}}
        )
        return message

    async def list_messages(self, stream_id: str, request: PageRequest) -> Page[ChatMessage]:
        """One page of a stream's history, oldest first."""
        await self.get_stream(stream_id)
        window: dict[str, int] = {}
        if request.after is not None:
            window["$gt"] = request.after
        if request.before is not None:
            window["$lt"] = request.before
        query = ChatMessage.find(self._history_filter(stream_id, window))
        query = query.sort([("seq", DESCENDING if request.from_end else ASCENDING)])
        items = await query.limit(request.limit + 1).to_list()
        more = len(items) > request.limit
        items = items[: request.limit]
        if request.from_end:
            items.reverse()
            has_previous = more
            has_next = request.before is not None and await self._exists(
                stream_id, {"$gte": request.before}
            )
        else:
            has_next = more
            has_previous = request.after is not None and await self._exists(
                stream_id, {"$lte": request.after}
            )
        return Page(items=items, has_previous=has_previous, has_next=has_next)

    async def subscribe(self, stream_id: str) -> AsyncIterator[ChatMessage]:
        """Every message created in the stream from now on, in order; ends when the stream ends."""
        async with self.hub.subscribe(stream_id) as subscriber:
            # Registered before the check, so an end racing with the check still completes us.
            stream = await self.get_stream(stream_id)
            if stream.status is StreamStatus.ENDED:
                return
            async for message in subscriber:
                yield message

    # -- internals -------------------------------------------------------------------------

    async def _admit(self, sender: User, stream_id: str) -> None:
        """Count a new message against the sender's rate limit; RateLimited when over it."""
        if not self.rate_limiter.enabled:
            return
        stream = await self.get_stream(stream_id)
        # The owner moderates their own chat and is never throttled; an ended stream refuses
        # the message anyway (in `_next_seq`), so it costs the sender nothing.
        if stream.owner.id == str(sender.id) or stream.status is StreamStatus.ENDED:
            return
        await self.rate_limiter.acquire(str(stream.id), str(sender.id))

    @staticmethod
    def _history_filter(stream_id: str, seq: dict[str, int] | None = None) -> dict[str, Any]:
        condition: dict[str, Any] = {"stream_id": eq(stream_id)}
        if seq:
            condition["seq"] = seq
        return condition

    async def _exists(self, stream_id: str, seq: dict[str, int]) -> bool:
        return await ChatMessage.find_one(self._history_filter(stream_id, seq)) is not None

    async def _find_by_dedup_key(self, stream_id: str, dedup_key: str) -> ChatMessage | None:
        return await ChatMessage.find_one({"stream_id": eq(stream_id), "dedup_key": eq(dedup_key)})

    async def _next_seq(self, stream_id: str) -> int:
        """Reserve the stream's next sequence number; the stream must exist and be LIVE."""
        object_id = parse_object_id(stream_id)
        raw = None
        if object_id is not None:
            raw = await LiveStream.get_pymongo_collection().find_one_and_update(
                {"_id": object_id, "status": eq(StreamStatus.LIVE.value)},
                {"$inc": {"last_seq": 1}},
                projection={"last_seq": True},
                return_document=ReturnDocument.AFTER,
            )
        if raw is None:
            await self.get_stream(stream_id)  # NotFound when it does not exist
            raise Conflict("Resource cannot be changed in its current state: the stream has ended")
        return int(raw["last_seq"])

    async def _append(
        self,
        sender: User,
        stream_id: str,
        kind: MessageKind,
        content: str,
        client_message_id: str | None,
        dedup_key: str,
    ) -> ChatMessage:
        seq = await self._next_seq(stream_id)
        message = ChatMessage(
            stream_id=stream_id,
            seq=seq,
            kind=kind,
            content=content,
            sender=sender.public_profile(),
            client_message_id=client_message_id,
            dedup_key=dedup_key,
        )
        message.updated_at = message.created_at
        await message.insert()
        self.hub.publish(message)
        return message
