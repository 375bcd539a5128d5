"""The domain rules of live-stream chat, shared by the GraphQL and REST front ends."""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from bson import ObjectId

from gql_api.batching import Batcher
from gql_api.delivery import Delivery
from gql_api.documents import (
    VISIBLE_KINDS,
    ChatMessage,
    ChatRole,
    ChatSettings,
    LiveStream,
    LogEvent,
    MessageKind,
    PublicProfile,
    StreamStatus,
    User,
    utcnow,
)
from gql_api.errors import ApiError, BadUserInput, Conflict, ContentBlocked, Forbidden, NotFound, RateLimited
from gql_api.hub import Feed, MessageHub
from gql_api.metrics import timed_send
from gql_api.moderation import MAX_SLOW_MODE_SECONDS, Clock, Moderation
from gql_api.pagination import Page, PageRequest, decode_cursor
from gql_api.ratelimit import MessageRateLimiter, Tally
from gql_api.roster import Roster
from gql_api.store import ChatStore, DedupKeyTaken, DuplicateKey, InsertStopped, SeqTaken, canonical_id

logger = logging.getLogger(__name__)

MAX_CONTENT_LENGTH = 500
MAX_CLIENT_MESSAGE_ID_LENGTH = 64
MAX_TITLE_LENGTH = 200
# The dedup key of a stream's end entry: unique per stream, so a stream ends once.
END_KEY = "end"
# Control characters (Unicode category Cc) other than tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _invalid(field: str, problem: str) -> BadUserInput:
    return BadUserInput(f"Validation failed: `{field}` {problem}", details=[f"{field}: {problem}"])


def _require_encodable(field: str, value: str) -> None:
    """Refuse what MongoDB cannot store: a lone UTF-16 surrogate (JSON's ``"\\ud83d"``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _invalid(field, "must be valid Unicode text (it holds a lone surrogate)") from exc


def _is_invisible(char: str) -> bool:
    # Whitespace and format characters (zero-width space, BOM, joiners, direction marks).
    return char.isspace() or unicodedata.category(char) == "Cf"


def _require_text(field: str, value: str, maximum: int) -> str:
    """``value`` trimmed, if it is 1 to ``maximum`` characters of text someone can see."""
    _require_encodable(field, value)
    if _CONTROL.search(value):
        raise _invalid(field, "must not contain control characters other than newline and tab")
    value = value.strip()
    if not 1 <= len(value) <= maximum or all(_is_invisible(c) for c in value):
        raise _invalid(field, f"must be 1 to {maximum} characters after trimming, not all invisible")
    return value


def _require_client_message_id(value: str) -> str:
    _require_encodable("clientMessageId", value)
    if not 1 <= len(value) <= MAX_CLIENT_MESSAGE_ID_LENGTH:
        raise _invalid("clientMessageId", f"must be 1 to {MAX_CLIENT_MESSAGE_ID_LENGTH} characters")
    return value


class _Wanted:
    """Which live entries of its stream a subscription (``ChatService._follow``) hands over:
    none up to ``skip_through``, no deleted message, and moderation events only with
    ``every_kind``. ``take`` is its hub listener: an unwanted entry is dealt with (nothing to
    send), a wanted one goes to ``consumer``."""

    __slots__ = ("chat", "consumer", "every_kind", "skip_through", "stream_id")

    def __init__(
        self,
        chat: ChatService,
        stream_id: str,
        skip_through: int,
        every_kind: bool,
        consumer: Callable[[ChatMessage], bool] | None,
    ) -> None:
        self.chat, self.stream_id, self.skip_through = chat, stream_id, skip_through
        self.every_kind, self.consumer = every_kind, consumer

    def __call__(self, entry: ChatMessage) -> bool:
        # Read once per delivery, not per subscriber: attribute reads of a document go through
        # Beanie's lazy parser.
        _, seq, visible, tombstone = self.chat._facts(entry)
        if seq <= self.skip_through:
            return False
        if visible:
            # A message deleted while it waited in the queue (or stored as a tombstone, when the
            # hub read it back from history) is never sent.
            return not tombstone and not self.chat.hub.is_deleted(self.stream_id, seq)
        return self.every_kind

    def take(self, entry: ChatMessage) -> bool:
        consumer = self.consumer
        return not self(entry) or (consumer is not None and consumer(entry))


def _stream_key(stream_id: str) -> str:
    """The one spelling of a stream id that every stored reference uses (lower-case hex)."""
    key = canonical_id(stream_id)
    if key is None:
        raise NotFound("Resource not found: no live stream has this id")
    return key


class _StreamEnded(Conflict):
    """A write found the stream's end entry in its log: nothing more may be stored after it."""

    def __init__(self, entry: ChatMessage) -> None:
        super().__init__("Resource cannot be changed in its current state: the stream has ended")
        self.entry = entry


# The most entries one group commit stores: a batch stays a small fraction of a wire message.
MAX_BATCH = 256
# Inserts of lone entries (one each of different streams) in flight at once: while one is in
# the database, the next fills and goes, so the database and this process work at the same
# time (measured with 50 senders in 50 streams: 0.53x raw inserts with one, 0.60-0.65x with two,
# no better with four). Safe because a stream has one commit at a time, so no two inserts in
# flight hold entries of the same stream.
LONE_IN_FLIGHT = 2


# A send's check at commit time: against the stream's roster as of the number it is about to
# take, the time, and the messages numbered before it in the same commit; the role it sends
# in, or an ApiError refusing it.
Admission = Callable[[Roster, datetime, Tally], ChatRole]


@dataclass(eq=False)
class _Pending:
    """An entry waiting for its sequence number: built at commit time from the number and, for
    a send, the role ``admit`` found (None for the entries nobody sends: events, the end)."""

    build: Callable[[int, ChatRole | None], ChatMessage]
    done: asyncio.Future[ChatMessage]
    admit: Admission | None = None

    def settle(self, entry: ChatMessage | None = None, error: BaseException | None = None) -> None:
        if self.done.done():  # settled before a later step of its commit failed
            return
        if error is not None:
            self.done.set_exception(error)
        else:
            self.done.set_result(entry)  # type: ignore[arg-type]


class _StreamWriters:
    """Per-stream group commit, and what this process knows of each stream's log.

    For each stream with writes in this process: the entries waiting for a number, and
    whether a commit is running (one at a time per stream). For the streams it writes to: the
    roster (who moderates, who is banned, the chat settings, as of the newest entry this
    process knows of: see ``roster``), and the stream as first read (its id and owner never
    change), so a send need not read either.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self.queues: dict[str, deque[_Pending]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.loading: dict[str, asyncio.Future[Roster]] = {}
        self._rosters: OrderedDict[str, Roster] = OrderedDict()
        self._streams: OrderedDict[str, LiveStream] = OrderedDict()

    def roster(self, stream_id: str) -> Roster | None:
        """The stream's roster, if this process has read it."""
        return self._rosters.get(stream_id)

    def remember_roster(self, roster: Roster) -> None:
        self._remember(self._rosters, roster.stream_id, roster)

    def forget(self, stream_id: str) -> None:
        """Drop what this process knows of the stream's log (a write's outcome is unknown)."""
        self._rosters.pop(stream_id, None)

    def stream(self, stream_id: str) -> LiveStream | None:
        """The stream as this process first read it (its status may have changed since)."""
        return self._streams.get(stream_id)

    def remember_stream(self, stream: LiveStream) -> None:
        self._remember(self._streams, str(stream.id), stream)

    def _remember(self, cache: OrderedDict[str, Any], key: str, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > self._capacity:
            cache.popitem(last=False)


class ChatService:
    """Streams and their messages: every rule about who may send what, and when.

    Every public method takes a stream id as the client spelled it and turns it into the one
    canonical spelling first (``_stream_key``), so an upper-case id names the same stream
    everywhere, keys included.
    """

    def __init__(
        self,
        hub: MessageHub[ChatMessage],
        delivery: Delivery,
        rate_limiter: MessageRateLimiter | None = None,
        *,
        store: ChatStore,
        clock: Clock = utcnow,
    ) -> None:
        self.hub = hub
        self.store = store
        self.delivery = delivery
        self._writers = _StreamWriters()
        # The commits of one entry, in many streams at once (a message each in quiet streams),
        # share unordered inserts, two in flight.
        self._lone: Batcher[ChatMessage, DuplicateKey | None] = Batcher(
            self._insert_lone, name="lone-entries", in_flight=LONE_IN_FLIGHT
        )
        self.rate_limiter = rate_limiter or MessageRateLimiter(0, 1)
        self.metrics = hub.metrics
        # Roles and bans: every send asks it whether its sender may, and in which role.
        self.moderation = Moderation(store, self.get_stream, clock, events=self)
        self._clock = clock
        # Stream id to owner id (an owner never changes), for the role of messages stored
        # before roles were: a bounded map, oldest out first.
        self._owners: OrderedDict[str, str] = OrderedDict()
        # What ``_is_wanted`` read of the entry it saw last: a delivery asks about one entry
        # once per subscriber, and a document's attribute reads go through Beanie's lazy parser.
        self._seen: tuple[object, int, bool, bool] = (None, 0, False, False)

    # -- streams ---------------------------------------------------------------------------

    async def get_stream(self, stream_id: str) -> LiveStream:
        """The stream with this id; NotFound when there is none."""
        stream = await self.store.stream(_stream_key(stream_id))
        if stream is None:
            raise NotFound("Resource not found: no live stream has this id")
        return stream

    async def find_stream(self, stream_id: str) -> LiveStream | None:
        """The stream with this id, or None."""
        try:
            return await self.get_stream(stream_id)
        except NotFound:
            return None

    async def owner_id(self, stream_id: str) -> str:
        """The id of the stream's owner (remembered: an owner never changes)."""
        key = _stream_key(stream_id)
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners[key] = (await self.get_stream(key)).owner.id
            if len(self._owners) > 10_000:
                self._owners.popitem(last=False)
        return owner

    async def create_stream(self, owner: User, title: str) -> LiveStream:
        """A new LIVE stream owned by ``owner``."""
        stream = LiveStream(title=_require_text("title", title, MAX_TITLE_LENGTH), owner=owner.public_profile())
        await self.store.insert_stream(stream)
        return stream

    async def superlike_count(self, stream_id: str) -> int:
        """How many users superliked the stream, counted from its stored superlikes."""
        return await self.store.superlike_count(_stream_key(stream_id))

    async def end_stream(self, user: User, stream_id: str) -> LiveStream:
        """End a LIVE stream (its owner only) and complete its subscriptions.

        The end is an entry of the stream's log, claimed as its next sequence number exactly
        as a message is (``_claim``): a message either got its number first, and so is
        delivered before the end, or finds the end in its place and is refused. Only then is
        the stream marked ENDED; a call that stopped between the two is finished by the next.
        """
        stream = await self.get_stream(stream_id)
        if stream.owner.id != str(user.id):
            raise Forbidden("Insufficient permissions: only the stream's owner can end it")
        if stream.status is StreamStatus.ENDED:
            raise Conflict("Resource cannot be changed in its current state: the stream has already ended")
        key = str(stream.id)

        def end_entry(seq: int, _: ChatRole | None) -> ChatMessage:
            return self._entry(
                key, seq, MessageKind.STREAM_ENDED, "", user.public_profile(), ChatRole.OWNER, None, END_KEY
            )

        stored_here = True
        try:
            end = await self._claim(key, end_entry)
        except _StreamEnded as exc:  # the log has an end already: finish its marking
            end, stored_here = exc.entry, False
        except DedupKeyTaken:
            newest = await self.store.newest(key)  # the end's key is taken: the end is the newest
            if newest is None or newest.kind is not MessageKind.STREAM_ENDED:
                raise
            end, stored_here = newest, False
        ended = await self.store.mark_stream_ended(key, end)
        if not stored_here:
            # The call that stored the end answers for it; this one only finishes its marking
            # (that call may have stopped in between), so exactly one end succeeds.
            await self.delivery.message_stored(end)  # in-process delivery may not have had it
            raise Conflict("Resource cannot be changed in its current state: the stream has already ended")
        if ended is None:  # marked already, by a call that found our end in place
            ended = await self.store.stream(key)
            if ended is None:  # pragma: no cover - streams are never deleted
                raise NotFound("Resource not found: no live stream has this id")
        return ended

    # -- messages --------------------------------------------------------------------------

    @timed_send("text")
    async def send_message(
        self, sender: User, stream_id: str, content: str, client_message_id: str | None = None
    ) -> ChatMessage:
        """Append a TEXT message; a retry with the same ``client_message_id`` returns the original.

        Counts against the sender's rate limit in the stream (not the owner's, and not a retry
        of an admitted message); superlikes do not count, as there is one per user anyway.
        A viewer is also held to the stream's chat settings: chat off, blocked terms, slow mode.
        Everything is validated before anything is counted or stored.
        """
        content = _require_text("content", content, MAX_CONTENT_LENGTH)
        if client_message_id is not None:
            client_message_id = _require_client_message_id(client_message_id)
        key = _stream_key(stream_id)
        if client_message_id is None:
            await self._live_stream(key)
            dedup_key = f"r:{ObjectId()}"
            admit = await self._admit(sender, key, content, dedup_key)
            return await self._append(sender, admit, key, MessageKind.TEXT, content, None, dedup_key)
        dedup_key = f"c:{sender.id}:{client_message_id}"
        for _ in range(2):
            existing = await self._find_by_dedup_key(key, dedup_key)
            if existing is not None:
                if existing.content != content:
                    raise Conflict("Resource already exists: this clientMessageId was used for other content")
                return existing
            await self._live_stream(key)
            admit = await self._admit(sender, key, content, dedup_key)  # a second round is the same message
            try:
                return await self._append(sender, admit, key, MessageKind.TEXT, content, client_message_id, dedup_key)
            except DedupKeyTaken:
                continue  # a concurrent retry won the race: read its message
        raise Conflict("Resource already exists: this clientMessageId is being used")  # pragma: no cover

    @timed_send("superlike")
    async def send_superlike(self, sender: User, stream_id: str) -> ChatMessage:
        """Append the sender's one SUPERLIKE of this stream (which is what superlikeCount counts)."""
        key = _stream_key(stream_id)
        await self._live_stream(key)
        admit = await self._admit(sender, key, None, None)
        try:
            return await self._append(sender, admit, key, MessageKind.SUPERLIKE, "", None, f"s:{sender.id}")
        except DedupKeyTaken as exc:
            raise Conflict(
                "Resource already exists: your superlike of this stream is stored already (one per user)"
            ) from exc

    async def append_event(
        self,
        stream_id: str,
        kind: MessageKind,
        role: ChatRole,
        event: LogEvent,
        dedup_key: str | None = None,
    ) -> ChatMessage | None:
        """Append a moderation event to the stream's log, numbered as its next entry (``_claim``),
        so ``chatEvents`` delivers it in order with the messages, and replays it after a cursor.

        ``dedup_key`` makes the event once-only (a repeated call appends nothing). None when
        nothing was appended: the event is there already, or the stream has ended (its log
        is closed: the action holds, but no subscription is left to tell).
        """
        key = dedup_key if dedup_key is not None else f"e:{ObjectId()}"

        def build(seq: int, _: ChatRole | None) -> ChatMessage:
            return self._entry(stream_id, seq, kind, "", event.actor, role, None, key, event)

        try:
            return await self._claim(stream_id, build)
        except (_StreamEnded, DedupKeyTaken):
            return None

    async def delete_message(
        self, actor: User, stream_id: str, message_id: str, reason: str | None = None
    ) -> ChatMessage:
        """Delete a message (see ``Moderation.delete_message``): its tombstone, which keeps the
        message's place in the log with its content emptied. Idempotent.

        Live subscribers that have the message queued but not yet sent are never sent it: this
        process holds it back at once, others as soon as their change stream brings the update.
        """
        return await self._delete(actor, _stream_key(stream_id), message_id, reason)

    async def delete_message_by_id(self, actor: User, message_id: str, reason: str | None = None) -> ChatMessage:
        """``delete_message`` for a message named by its id alone (GraphQL's ``deleteChatMessage``)."""
        return await self._delete(actor, None, message_id, reason)

    async def _delete(self, actor: User, stream_id: str | None, message_id: str, reason: str | None) -> ChatMessage:
        tombstone, _ = await self.moderation.delete_message(actor, stream_id, message_id, reason)
        await self.delivery.message_deleted(tombstone)  # again on a repeat: cheap, and covers a crash in between
        return tombstone

    async def list_messages(self, stream_id: str, request: PageRequest) -> Page[ChatMessage]:
        """One page of a stream's history, oldest first."""
        key = str((await self.get_stream(stream_id)).id)
        items = await self.store.read_window(
            key,
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
            has_next = request.before is not None and await self.store.has_messages_from(key, request.before)
        else:
            has_next = more
            has_previous = request.after is not None and await self.store.has_messages_through(key, request.after)
        return Page(items=items, has_previous=has_previous, has_next=has_next)

    def subscribe(self, stream_id: str, after: str | None = None) -> Feed[ChatMessage]:
        """Every message after the cursor ``after`` (or from now), in order, each once.

        Ends when the stream ends, after its last message. Stored messages are replayed first,
        then live ones, with nothing missed or repeated at the switch-over. Deleted messages are
        left out, from replay and from the live queue alike (see ``delete_message``), and so are
        the log's moderation events (``events`` has them).
        """
        feed: Feed[ChatMessage] = Feed()
        return feed.start(self._follow(stream_id, after, every_kind=False, feed=feed))

    def events(self, stream_id: str, after: str | None = None) -> Feed[ChatMessage]:
        """Every entry of the stream's log after the cursor ``after`` (or from now): messages,
        moderation events and, last, the stream's end entry; in order, each once.

        Messages and events share one numbering, so the cursor of either resumes both. The
        guarantees are ``subscribe``'s: stored entries first, then live ones, nothing missed or
        repeated at the switch-over. A message deleted before it was yielded is left out; the
        MESSAGE_DELETED event that tells of it is not. Subscribing to an ended stream without
        ``after`` yields its end entry alone.
        """
        feed: Feed[ChatMessage] = Feed()
        return feed.start(self._follow(stream_id, after, every_kind=True, feed=feed))

    async def _follow(
        self, stream_id: str, after: str | None, *, every_kind: bool, feed: Feed[ChatMessage]
    ) -> AsyncGenerator[ChatMessage, None]:
        """``subscribe`` (messages only) or, with ``every_kind``, ``events`` (every entry)."""
        after_seq = decode_cursor(after, argument="after") if after is not None else None
        key = _stream_key(stream_id)
        async with self.hub.subscribe(key) as subscriber:
            # NotFound for no such stream. Its status is not read: the stream's end is an entry
            # of its log, which the hub's group follows, so a stream that has ended completes
            # its subscriber (through the end entry) and one that ends later does too, in order.
            # Nor is the stream read again per subscription: thousands of viewers joining at
            # once would each wait for a read.
            await self._known_stream(key)
            if after_seq is not None:
                # Stored entries up to where the group stood when we joined; the rest come live.
                through = subscriber.start_seq
                async for entry in self.store.replay(key, after=after_seq, through=through, every_kind=every_kind):
                    if entry.deletion is None:
                        yield entry
                    if entry.kind is MessageKind.STREAM_ENDED:
                        return
            # A cursor ahead of what this process has delivered (a message stored, not yet seen
            # on the change stream): the live messages up to it were asked to be skipped.
            skip_through = after_seq if after_seq is not None else 0
            wanted = _Wanted(self, key, skip_through, every_kind, feed.consumer)
            if feed.consumer is not None:
                # Live entries go to the consumer in the hub's delivery pass while this waits.
                subscriber.listener = wanted.take
            async for entry in subscriber:
                if wanted(entry):
                    yield entry
            if every_kind:
                # The hub completes its subscribers at the end entry without handing it over.
                end = await self._end_entry(key)
                if end is not None and end.seq > skip_through:
                    yield end

    def _facts(self, entry: ChatMessage) -> tuple[object, int, bool, bool]:
        """What ``_Wanted`` reads of an entry: (entry, seq, kind is visible, stored deleted)."""
        seen = self._seen
        if seen[0] is not entry:
            seen = self._seen = (entry, entry.seq, entry.kind in VISIBLE_KINDS, entry.deletion is not None)
        return seen

    async def _end_entry(self, stream_id: str) -> ChatMessage | None:
        """The stream's end entry, read back from its log; None while it has not ended."""
        newest = await self.store.newest(stream_id)
        return newest if newest is not None and newest.kind is MessageKind.STREAM_ENDED else None

    # -- internals -------------------------------------------------------------------------

    async def _admit(self, sender: User, stream_id: str, content: str | None, dedup_key: str | None) -> Admission:
        """Check a send against the stream's roster as this process knows it, to refuse at
        once what it can: the error refusing it, or the check its commit makes, against the
        roster as of the number it is about to take (see ``roster``).

        A message (``dedup_key``; a superlike has None) counts against the sender's rate limit
        and the stream's slow mode. The owner is held to no chat setting and never throttled;
        moderators are held to the rate limit but not to the settings, which are for viewers.
        """
        roster = await self._roster(stream_id)
        user_id = str(sender.id)
        try:
            self._check(roster, user_id, content, dedup_key, self._clock())
        except (Forbidden, ContentBlocked):
            # Refused by what this process knows: the entries it has not read yet may lift it.
            await self._catch_up(roster)
            self._check(roster, user_id, content, dedup_key, self._clock())
        except RateLimited:
            # More entries only hold more messages; but slow mode may have been eased.
            if not self._slow_mode(roster, user_id):
                raise
            await self._catch_up(roster)
            self._check(roster, user_id, content, dedup_key, self._clock())

        def admit(roster: Roster, now: datetime, tally: Tally) -> ChatRole:
            return self._check(roster, user_id, content, dedup_key, now, tally)

        return admit

    def _check(
        self,
        roster: Roster,
        user_id: str,
        content: str | None,
        dedup_key: str | None,
        now: datetime,
        tally: Tally | None = None,
    ) -> ChatRole:
        """The role the user sends in, refused when ``_hold`` refuses it, or when the message
        (``dedup_key``) is over the rate limit or too soon in slow mode after the user's
        messages in the roster and, at commit time, those numbered before it (``tally``,
        where it is then counted)."""
        role = self._hold(roster, user_id, content, now)
        if dedup_key is None or role is ChatRole.OWNER:
            return role
        now_ms = int(now.timestamp() * 1000)
        sent = tally.of(user_id) if tally is not None else roster.sends.of(user_id)
        counted = self.rate_limiter.check(sent, dedup_key, now_ms, self._slow_mode(roster, user_id))
        if tally is not None and not counted:
            tally.add(user_id, now_ms, dedup_key)
        return role

    def _hold(self, roster: Roster, user_id: str, content: str | None, now: datetime | None = None) -> ChatRole:
        """The role the user sends in, refused when they are banned or the settings forbid
        the send (``content``: a text message's; None for a superlike)."""
        role = roster.admit(user_id, now or self._clock())
        Moderation.hold_to_settings(role, roster.settings, content)
        return role

    @staticmethod
    def _slow_mode(roster: Roster, user_id: str) -> int:
        return roster.settings.slow_mode_seconds if roster.role(user_id) is ChatRole.VIEWER else 0

    async def _roster(self, stream_id: str) -> Roster:
        """The stream's roster: as this process follows it, or read afresh (once at a time)."""
        roster = self._writers.roster(stream_id)
        if roster is not None and not roster.stale:
            return roster
        loading = self._writers.loading.get(stream_id)
        if loading is None:
            loading = self._writers.loading[stream_id] = asyncio.ensure_future(self._read_roster(stream_id))
            loading.add_done_callback(partial(self._roster_read, stream_id))
        return await asyncio.shield(loading)

    def _roster_read(self, stream_id: str, loading: asyncio.Future[Roster]) -> None:
        if self._writers.loading.get(stream_id) is loading:
            del self._writers.loading[stream_id]
        if not loading.cancelled():
            loading.exception()  # retrieved: every caller that waited re-raises it itself

    async def _read_roster(self, stream_id: str) -> Roster:
        owner_id = await self.owner_id(stream_id)
        # The log's position first: the documents read after it hold every change told up to it.
        newest = await self.store.newest(stream_id)
        settings, members = await asyncio.gather(self.store.chat_settings(stream_id), self.store.members(stream_id))
        # The messages the rate limit counts are entries of the log: exact as of any position,
        # so those of the roster this one replaces (read again when stale) go on as they are.
        previous = self._writers.roster(stream_id)
        sends = previous.sends if previous is not None else self.rate_limiter.new_log(MAX_SLOW_MODE_SECONDS)
        roster = Roster.read(stream_id, owner_id, newest, settings or ChatSettings(), members, sends)
        await self._read_sends(roster)
        self._writers.remember_roster(roster)
        return roster

    async def _read_sends(self, roster: Roster) -> None:
        """Bring the roster's messages up to its position: the log's entries after the one its
        ``sends`` has reached, or, for a new log, those within its horizon."""
        sends = roster.sends
        if sends.position >= roster.position:
            return
        if sends.position > 0:
            async for entry in self.store.replay(
                roster.stream_id, after=sends.position, through=roster.position, every_kind=True
            ):
                roster.note_send(entry.seq, entry.kind, entry.sender.id, entry.created_at, entry.dedup_key)
        else:
            since = self._clock() - timedelta(milliseconds=sends.horizon_ms)
            entries = await self.store.recent_entries(roster.stream_id, through=roster.position, since=since)
            for logged in reversed(entries):
                roster.note_send(logged.seq, logged.kind, logged.sender_id, logged.created_at, logged.dedup_key)
        sends.position = max(sends.position, roster.position)

    async def _catch_up(self, roster: Roster) -> None:
        """Apply the entries of the stream's log after the roster's position."""
        async for entry in self.store.replay(roster.stream_id, after=roster.position, every_kind=True):
            roster.apply(entry)

    async def _find_by_dedup_key(self, stream_id: str, dedup_key: str) -> ChatMessage | None:
        return await self.store.message_by_dedup_key(stream_id, dedup_key)

    async def _known_stream(self, stream_id: str) -> LiveStream:
        """The stream as this process first read it; NotFound when there is none. Its id and
        owner never change, and streams are never deleted; its status may have changed."""
        stream = self._writers.stream(stream_id)
        if stream is None:
            stream = await self.get_stream(stream_id)
            self._writers.remember_stream(stream)
        return stream

    async def _live_stream(self, stream_id: str) -> LiveStream:
        """The stream a message is sent to, refused when it is known to have ended.

        Read once per process: its id and owner never change, and its status need not be
        re-read for every send, as the claim is what refuses a message after the end (the
        end entry holds the number a later message would take). This only spares a send
        that would be refused anyway its admission. Its chat settings do change: a send reads
        them from the stream's roster (``_admit``), never from here.
        """
        stream = await self._known_stream(stream_id)
        roster = self._writers.roster(stream_id)
        if stream.status is not StreamStatus.LIVE or (roster is not None and roster.end is not None):
            raise Conflict("Resource cannot be changed in its current state: the stream has ended")
        return stream

    @staticmethod
    def _entry(
        stream_id: str,
        seq: int,
        kind: MessageKind,
        content: str,
        sender: PublicProfile,
        role: ChatRole,
        client_message_id: str | None,
        dedup_key: str,
        event: LogEvent | None = None,
    ) -> ChatMessage:
        now = utcnow()  # taken for each attempt: an entry is never older than the one before it
        return ChatMessage(
            stream_id=stream_id,
            seq=seq,
            kind=kind,
            content=content,
            sender=sender,
            sender_role=role,
            client_message_id=client_message_id,
            dedup_key=dedup_key,
            created_at=now,
            updated_at=now,
            event=event,
        )

    async def _append(
        self,
        sender: User,
        admit: Admission,
        stream_id: str,
        kind: MessageKind,
        content: str,
        client_message_id: str | None,
        dedup_key: str,
    ) -> ChatMessage:
        """Store a message as the stream's next in sequence (see ``_claim``), in the role
        ``admit`` finds for it then."""

        def build(seq: int, role: ChatRole | None) -> ChatMessage:
            assert role is not None  # a send is always admitted first
            return self._entry(
                stream_id, seq, kind, content, sender.public_profile(), role, client_message_id, dedup_key
            )

        return await self._claim(stream_id, build, admit)

    async def _claim(
        self, stream_id: str, build: Callable[[int, ChatRole | None], ChatMessage], admit: Admission | None = None
    ) -> ChatMessage:
        """Store an entry as the stream's next in sequence, then hand it to live delivery.

        The sequence number is the newest stored one plus one, claimed by the unique
        (stream_id, seq) index: a writer can only take N+1 once N is stored, so numbers have no
        holes and are stored in order, which is what lets subscribers resume without gaps.
        When the newest is the stream's end, nothing more is stored: ``_StreamEnded``.

        Writes to one stream are group-committed: one commit at a time per stream and
        process, and the entries that arrive while it runs wait and are then stored
        together, numbered consecutively, by one ordered insert (``_commit``). Another
        replica's writes show up as a taken number, and the rest are renumbered.

        ``admit`` checks a send once more against the stream's roster as of its number.
        """
        pending = _Pending(build, asyncio.get_running_loop().create_future(), admit)
        queue = self._writers.queues.get(stream_id)
        if queue is None:
            queue = self._writers.queues[stream_id] = deque()
            task = asyncio.create_task(self._commits(stream_id, queue), name=f"commit:{stream_id}")
            self._writers.tasks.add(task)
            task.add_done_callback(self._writers.tasks.discard)
        queue.append(pending)
        # The commit goes on when the caller goes away (as ``store.detached`` operations do):
        # the entry is stored, and a retry with its clientMessageId finds it.
        return await asyncio.shield(pending.done)

    async def _insert_lone(self, entries: list[ChatMessage]) -> list[DuplicateKey | None]:
        return await self.store.insert_lone_entries(entries)

    async def _commits(self, stream_id: str, queue: deque[_Pending]) -> None:
        """Commit the stream's waiting entries, a batch at a time, until none is left."""
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
                try:
                    await self._commit(stream_id, batch)
                except BaseException as exc:  # the outcome is unknown: re-read the log next time
                    self._writers.forget(stream_id)
                    for pending in batch:
                        pending.settle(error=exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            del self._writers.queues[stream_id]
            for pending in queue:  # only when cancelled (at shutdown)
                pending.done.cancel()

    async def _commit(self, stream_id: str, batch: list[_Pending]) -> None:
        """Store a batch in order, settling each entry's future as it is stored or refused.

        Each send is checked against the roster as of the number it is about to take, and
        refused there if an entry before it forbids it (a ban, a settings change). An ordered
        insert that stops at a duplicate key stored the entries before it. A taken number
        (another replica's write) sends the rest back, to be checked and numbered again once
        the roster has applied the entries it had not seen; a taken dedup key refuses that one
        entry, and the rest take the numbers from it on.
        """
        roster = await self._roster(stream_id)
        while batch:
            if roster.end is not None:
                for pending in batch:
                    pending.settle(error=_StreamEnded(roster.end))
                return
            now = self._clock()
            tally = Tally(roster.sends)
            numbered: list[_Pending] = []
            entries: list[ChatMessage] = []
            for pending in batch:
                if entries and entries[-1].kind is MessageKind.STREAM_ENDED:
                    numbered.append(pending)  # nothing is numbered after the end: refused next round
                    continue
                try:
                    role = pending.admit(roster, now, tally) if pending.admit is not None else None
                except ApiError as exc:
                    pending.settle(error=exc)
                    continue
                numbered.append(pending)
                entries.append(pending.build(roster.position + 1 + len(entries), role))
            if not entries:
                return
            if len(entries) == 1:
                # One entry: it goes with the lone entries of other streams (``_lone``).
                refused = await self._lone.submit(entries[0])
                stored = 0 if refused is not None else 1
            else:
                try:
                    await self.store.insert_entries(entries)
                    stored, refused = len(entries), None
                except InsertStopped as exc:
                    stored, refused = exc.stored, exc.cause
            for pending, entry in zip(numbered, entries[:stored], strict=False):
                roster.apply(entry)
                await self.delivery.message_stored(entry)
                pending.settle(entry)
            batch = numbered[stored:]
            if isinstance(refused, SeqTaken):
                await self._catch_up(roster)
            elif refused is not None:  # this entry is in the log already; the number is free
                batch.pop(0).settle(error=refused)
