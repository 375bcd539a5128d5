"""The domain rules of live-stream chat, shared by the GraphQL and REST front ends."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from gql_api import history
from gql_api.compat import eq, is_duplicate_of, parse_object_id
from gql_api.database import detached
from gql_api.delivery import Delivery
from gql_api.documents import ChatMessage, LiveStream, MessageKind, StreamStatus, User, utcnow
from gql_api.errors import BadUserInput, Conflict, Forbidden, NotFound
from gql_api.hub import MessageHub
from gql_api.metrics import timed_send
from gql_api.pagination import Page, PageRequest, decode_cursor
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


class _StreamWriters:
    """Per-stream write locks and the last sequence number this process stored, for hot streams."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._last: OrderedDict[str, int] = OrderedDict()

    def lock(self, stream_id: str) -> asyncio.Lock:
        lock = self._locks.get(stream_id)
        if lock is None:
            lock = self._locks[stream_id] = asyncio.Lock()
        return lock

    def last_seq(self, stream_id: str) -> int | None:
        return self._last.get(stream_id)

    def remember(self, stream_id: str, seq: int) -> None:
        self._last[stream_id] = seq
        self._last.move_to_end(stream_id)
        if len(self._last) > self._capacity:
            self._last.popitem(last=False)


class ChatService:
    """Streams and their messages: every rule about who may send what, and when."""

    def __init__(
        self, hub: MessageHub, delivery: Delivery, rate_limiter: MessageRateLimiter | None = None
    ) -> None:
        self.hub = hub
        self.delivery = delivery
        self._writers = _StreamWriters()
        self.rate_limiter = rate_limiter or MessageRateLimiter(0, 1)
        self.metrics = hub.metrics

    # -- streams ---------------------------------------------------------------------------

    async def get_stream(self, stream_id: str) -> LiveStream:
        """The stream with this id; NotFound when there is none."""
        object_id = parse_object_id(stream_id)
        stream = await detached(LiveStream.get(object_id)) if object_id is not None else None
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
        await self.delivery.stream_ended(stream_id)
        await self.rate_limiter.forget(stream_id)
        return LiveStream.model_validate(raw)

    # -- messages --------------------------------------------------------------------------

    @timed_send("text")
    async def send_message(
        self, sender: User, stream_id: str, content: str, client_message_id: str | None = None
    ) -> ChatMessage:
        """Append a TEXT message; a retry with the same ``client_message_id`` returns the original.

        Counts against the sender's rate limit in the stream (not the owner's, and not a retry
        that returns the original); superlikes do not count, as there is one per user anyway.
        """
        content = _require_length("content", content, MAX_CONTENT_LENGTH)
        if client_message_id is None:
            stream = await self._live_stream(stream_id)
            await self._admit(sender, stream)
            return await self._append(sender, stream, MessageKind.TEXT, content, None, f"r:{ObjectId()}")
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
            stream = await self._live_stream(stream_id)
            if attempt == 0:
                await self._admit(sender, stream)
            try:
                return await self._append(
                    sender, stream, MessageKind.TEXT, content, client_message_id, dedup_key
                )
            except DuplicateKeyError:
                continue  # a concurrent retry won the race: read its message
        raise Conflict("Resource already exists: this clientMessageId is being used")  # pragma: no cover

    @timed_send("superlike")
    async def send_superlike(self, sender: User, stream_id: str) -> ChatMessage:
        """Append the sender's one SUPERLIKE of this stream and count it."""
        stream = await self._live_stream(stream_id)
        try:
            message = await self._append(
                sender, stream, MessageKind.SUPERLIKE, "", None, f"s:{sender.id}"
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
        items = await history.read_window(
            stream_id,
            after=request.after,
            before=request.before,
            limit=request.limit + 1,
            newest_first=request.from_end,
        )
        more = len(items) > request.limit
        items = items[: request.limit]
        if request.from_end:
            items.reverse()
            has_previous = more
            has_next = request.before is not None and await history.exists(
                stream_id, {"$gte": request.before}
            )
        else:
            has_next = more
            has_previous = request.after is not None and await history.exists(
                stream_id, {"$lte": request.after}
            )
        return Page(items=items, has_previous=has_previous, has_next=has_next)

    async def subscribe(self, stream_id: str, after: str | None = None) -> AsyncIterator[ChatMessage]:
        """Every message after the cursor ``after`` (or from now), in order, each once.

        Ends when the stream ends. Stored messages are replayed first, then live ones, with
        nothing missed or repeated at the switch-over.
        """
        after_seq = decode_cursor(after, argument="after") if after is not None else None
        if parse_object_id(stream_id) is None:
            raise NotFound("Resource not found: no live stream has this id")
        async with self.hub.subscribe(stream_id) as subscriber:
            # Joined before the check, so an end racing with the check still completes us.
            stream = await self.get_stream(stream_id)
            ended = stream.status is StreamStatus.ENDED
            if after_seq is not None:
                through = None if ended else subscriber.start_seq
                async for message in history.replay(stream_id, after=after_seq, through=through):
                    yield message
            if ended:
                return
            # A cursor ahead of what this process has delivered (a message stored, not yet seen
            # on the change stream): the live messages up to it were asked to be skipped.
            skip_through = after_seq if after_seq is not None else 0
            async for message in subscriber:
                if message.seq > skip_through:
                    yield message

    # -- internals -------------------------------------------------------------------------

    async def _admit(self, sender: User, stream: LiveStream) -> None:
        """Count a new message against the sender's rate limit; RateLimited when over it."""
        # The owner moderates their own chat and is never throttled.
        if not self.rate_limiter.enabled or stream.owner.id == str(sender.id):
            return
        await self.rate_limiter.acquire(str(stream.id), str(sender.id))

    async def _find_by_dedup_key(self, stream_id: str, dedup_key: str) -> ChatMessage | None:
        return await ChatMessage.find_one({"stream_id": eq(stream_id), "dedup_key": eq(dedup_key)})

    async def _live_stream(self, stream_id: str) -> LiveStream:
        stream = await self.get_stream(stream_id)
        if stream.status is not StreamStatus.LIVE:
            raise Conflict("Resource cannot be changed in its current state: the stream has ended")
        return stream

    async def _append(
        self,
        sender: User,
        stream: LiveStream,
        kind: MessageKind,
        content: str,
        client_message_id: str | None,
        dedup_key: str,
    ) -> ChatMessage:
        """Store a message as the stream's next in sequence, then hand it to live delivery.

        The sequence number is the newest stored one plus one, claimed by the unique
        (stream_id, seq) index: a writer can only take N+1 once N is stored, so numbers have no
        holes and are stored in order, which is what lets subscribers resume without gaps. A
        lock per stream keeps this process's writers from colliding; another replica's writes
        show up as a duplicate key, and the writer re-reads the newest number and tries again.
        """
        stream_id = str(stream.id)
        async with self._writers.lock(stream_id):
            seq = self._writers.last_seq(stream_id)
            if seq is None:
                seq = await history.latest_seq(stream_id)
            while True:
                message = ChatMessage(
                    stream_id=stream_id,
                    seq=seq + 1,
                    kind=kind,
                    content=content,
                    sender=sender.public_profile(),
                    client_message_id=client_message_id,
                    dedup_key=dedup_key,
                )
                message.updated_at = message.created_at
                try:
                    await message.insert()
                    break
                except DuplicateKeyError as exc:
                    if not is_duplicate_of(exc, "seq"):
                        raise
                    seq = await history.latest_seq(stream_id)
            self._writers.remember(stream_id, message.seq)
        await self.delivery.message_stored(message)
        return message
