"""Every database query the app makes, in one place: ``ChatStore``.

The domain (``service``, ``hub``, ``users``, ``demo``, ``auth``) asks the store in its own
terms (the newest entry of a stream's log, a window of it, its recent entries) and never
writes a query. What only a database should know stays here:

- **Query shapes.** Equality is ``compat.eq`` (nx-27017 scans the table for the short form);
  a log is read over the ``(stream_id, seq)`` index, never over ``_id``; counts are indexed
  finds. ``compat`` is imported by this module only.
- **Duplicate keys.** An insert that collides with a unique index raises the one exception
  that says which: ``SeqTaken`` (another writer took the stream's next sequence number),
  ``DedupKeyTaken`` (the stream has the entry already: a retry, the one superlike, the end),
  ``UsernameTaken``. No ``DuplicateKeyError`` leaves the store.
- **Detached operations.** Every operation, read or write, is awaited through ``detached``.
  pymongo 4.20's async driver can hang a task that is cancelled in the middle of an operation
  (measured: about 2 in 100 cancelled ``find_one`` calls never finish), and tasks are
  cancelled whenever a client goes away: a subscription's (group set-up, replays, the stream
  check), and a websocket's mutations when its socket closes. A detached operation runs in a
  task of its own, so the caller is cancelled at once and the driver finishes undisturbed;
  the result of an operation nobody awaits any more is dropped (a write stays written: the
  log is correct whoever wrote it, and a client's retry with its ``clientMessageId`` finds
  the message).

The store holds no state: it works on the documents ``database.open_database`` binds Beanie
to, so one can be built before the database is open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from beanie import PydanticObjectId, SortDirection
from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from gql_api.compat import (
    EMPTY_BATCH_PAUSE_SECONDS,
    change_event_document,
    change_event_updated_fields,
    count_matching,
    eq,
    is_duplicate_of,
    parse_object_id,
)
from gql_api.documents import (
    VISIBLE_KINDS,
    Appointment,
    ChatBanRecord,
    ChatMessage,
    ChatSettings,
    LiveStream,
    MessageDeletion,
    MessageKind,
    ModerationAction,
    PublicProfile,
    StreamMember,
    StreamStatus,
    User,
    ViewerPresence,
    utcnow,
)

__all__ = [
    "EMPTY_BATCH_PAUSE_SECONDS",
    "REPLAY_BATCH",
    "ChatStore",
    "DedupKeyTaken",
    "DuplicateKey",
    "InsertStopped",
    "LoggedEntry",
    "SeqTaken",
    "TargetIsModerator",
    "UsernameTaken",
    "canonical_id",
    "detached",
    "member_key",
    "message_from_change_event",
]

T = TypeVar("T")

REPLAY_BATCH = 100
# Entries per page of ``recent_entries``: rows of a few fields each.
RECENT_PAGE = 1000
_EPOCH = datetime.fromtimestamp(0, UTC)


class DuplicateKey(Exception):
    """An insert collided with a unique index; the subclass says which."""


class SeqTaken(DuplicateKey):
    """Another writer stored an entry with this sequence number in the stream first."""


class DedupKeyTaken(DuplicateKey):
    """The stream has an entry with this dedup key already."""


class UsernameTaken(DuplicateKey):
    """Another user has this username."""


class InsertStopped(Exception):
    """An ordered insert of several entries stopped at a duplicate key.

    ``stored`` entries before it are stored, in order; the one at that index (which
    ``cause`` names: ``SeqTaken`` or ``DedupKeyTaken``) and every one after it are not.
    """

    def __init__(self, stored: int, cause: DuplicateKey) -> None:
        super().__init__(f"stopped after {stored} entries: {type(cause).__name__}")
        self.stored = stored
        self.cause = cause


# Duplicate-key errors, the one code a unique index raises.
_DUPLICATE_KEY = 11000


class TargetIsModerator(Exception):
    """A moderation write that must not touch a moderator found one."""


class LoggedEntry(NamedTuple):
    """What the rate limit reads of a log entry (``ChatStore.recent_entries``)."""

    seq: int
    kind: MessageKind
    sender_id: str
    created_at: datetime
    dedup_key: str


async def detached(operation: Awaitable[T]) -> T:
    """Await a database operation that the caller's cancellation cannot interrupt (see above)."""
    task = asyncio.ensure_future(operation)
    # Once the caller has gone, nobody awaits the task: take its outcome so that a failure
    # is not reported as never retrieved.
    task.add_done_callback(_settled)
    return await asyncio.shield(task)


def _settled(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def canonical_id(value: str) -> str | None:
    """The one spelling (lower-case hex) of a document id, or None when ``value`` names none."""
    object_id = parse_object_id(value)
    return str(object_id) if object_id is not None else None


def member_key(stream_id: str, user_id: str) -> str:
    """The id of a user's member document in a stream (see ``documents.StreamMember``)."""
    return f"{stream_id}:{user_id}"


def message_from_change_event(event: dict[str, Any]) -> ChatMessage:
    """The entry an insert event on the messages collection carries."""
    message: ChatMessage = ChatMessage.model_validate(change_event_document(event))
    return message


def deletion_from_change_event(event: dict[str, Any]) -> MessageDeletion | None:
    """The deletion an update event on the messages collection carries, if it is one."""
    deletion = change_event_updated_fields(event).get("deletion")
    return MessageDeletion.model_validate(deletion) if isinstance(deletion, dict) else None


def _window(after: int | None, before: int | None) -> dict[str, int]:
    window: dict[str, int] = {}
    if after is not None:
        window["$gt"] = after
    if before is not None:
        window["$lt"] = before
    return window


class ChatStore:
    """The queries of live-stream chat: streams, their logs and users.

    A stream's log holds its messages and, once it has ended, one STREAM_ENDED entry after the
    last of them. Windows, replays and existence checks show messages only unless asked for
    the end; ``newest`` is whichever entry is newest.
    """

    # -- streams ---------------------------------------------------------------------------

    async def stream(self, stream_id: str) -> LiveStream | None:
        """The stream with this id, or None."""
        object_id = parse_object_id(stream_id)
        if object_id is None:
            return None
        return await detached(LiveStream.get(object_id))

    async def insert_stream(self, stream: LiveStream) -> None:
        """Store a new stream (its id is set on it)."""
        await detached(stream.insert())

    async def mark_stream_ended(self, stream_id: str, end: ChatMessage) -> LiveStream | None:
        """Mark a LIVE stream ENDED at its end entry; None when it was not LIVE (any more)."""
        raw = await detached(
            LiveStream.get_pymongo_collection().find_one_and_update(
                {"_id": ObjectId(stream_id), "status": eq(StreamStatus.LIVE.value)},
                {"$set": {"status": StreamStatus.ENDED.value, "ended_at": end.created_at, "ended_seq": end.seq}},
                return_document=ReturnDocument.AFTER,
            )
        )
        return LiveStream.model_validate(raw) if raw is not None else None

    async def chat_settings(self, stream_id: str) -> ChatSettings | None:
        """The stream's chat settings alone (for a stream's roster), or None when there is no
        such stream."""
        raw = await detached(
            LiveStream.get_pymongo_collection().find_one({"_id": ObjectId(stream_id)}, {"chat_settings": 1})
        )
        if raw is None:
            return None
        return ChatSettings.model_validate(raw.get("chat_settings") or {})

    async def update_chat_settings(self, stream_id: str, fields: dict[str, Any]) -> LiveStream | None:
        """Set some of the stream's chat settings (``ChatSettings`` field names and their stored
        values), each by its own path so that concurrent changes of other fields stand: the
        stream as it is after, or None when there is no such stream."""
        raw = await detached(
            LiveStream.get_pymongo_collection().find_one_and_update(
                {"_id": ObjectId(stream_id)},
                {"$set": {f"chat_settings.{name}": value for name, value in fields.items()}},
                return_document=ReturnDocument.AFTER,
            )
        )
        return LiveStream.model_validate(raw) if raw is not None else None

    async def live_stream_titled(self, owner_id: str, title: str) -> LiveStream | None:
        """A LIVE stream of this owner with this title, if there is one."""
        condition = {"owner.id": eq(owner_id), "title": eq(title), "status": eq(StreamStatus.LIVE.value)}
        return await detached(LiveStream.find_one(condition))

    # -- a stream's log --------------------------------------------------------------------

    async def insert_entry(self, entry: ChatMessage) -> None:
        """Store an entry of a stream's log: ``SeqTaken`` or ``DedupKeyTaken`` when either is."""
        try:
            await detached(entry.insert())
        except DuplicateKeyError as exc:
            if is_duplicate_of(exc, "seq"):
                raise SeqTaken() from exc
            if is_duplicate_of(exc, "dedup_key"):
                raise DedupKeyTaken() from exc
            raise

    async def insert_entries(self, entries: list[ChatMessage]) -> None:
        """Store consecutive entries of one stream's log in one ordered insert (a group commit).

        Each entry is given its id first. An insert that stops at a duplicate key raises
        ``InsertStopped``: an ordered insert stores every entry before the failing one and
        none after it, on MongoDB and nx-27017 alike.
        """
        try:
            await detached(ChatMessage.get_pymongo_collection().insert_many(_rows(entries), ordered=True))
        except BulkWriteError as exc:
            [error, *_] = exc.details.get("writeErrors") or [{}]
            raise InsertStopped(error["index"], _duplicate_key(error)) from exc

    async def insert_lone_entries(self, entries: list[ChatMessage]) -> list[DuplicateKey | None]:
        """Store entries of different streams, one each, in one unordered insert: for each,
        None when it was stored, else the duplicate key that refused it alone.

        Unordered is safe only because no two entries share a stream: a refused entry has
        no later one of its stream stored past it, so no stream's numbers get a hole.
        """
        outcomes: list[DuplicateKey | None] = [None] * len(entries)
        try:
            await detached(ChatMessage.get_pymongo_collection().insert_many(_rows(entries), ordered=False))
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors") or []:
                outcomes[error["index"]] = _duplicate_key(error)
        return outcomes

    async def newest(self, stream_id: str) -> ChatMessage | None:
        """The newest entry of the stream's log (its end entry once it has ended); None when empty."""
        rows = await self._read(stream_id, {}, limit=1, newest_first=True)
        return rows[0] if rows else None

    async def read_window(
        self,
        stream_id: str,
        *,
        after: int | None,
        before: int | None,
        limit: int,
        newest_first: bool,
    ) -> list[ChatMessage]:
        """Up to ``limit`` messages with ``after < seq < before``, from the chosen end, in that order.

        Only messages: the log's other entries (moderation events, the end) are left out by
        the query, which still walks the (stream_id, seq) index.
        """
        return await self._read(stream_id, _window(after, before), limit=limit, newest_first=newest_first, visible=True)

    async def has_messages_from(self, stream_id: str, seq: int) -> bool:
        """Whether the stream has a message (not another entry) numbered ``seq`` or later."""
        return bool(await self._read(stream_id, {"$gte": seq}, limit=1, newest_first=False, visible=True))

    async def has_messages_through(self, stream_id: str, seq: int) -> bool:
        """Whether the stream has a message numbered ``seq`` or earlier."""
        return bool(await self._read(stream_id, {"$lte": seq}, limit=1, newest_first=True, visible=True))

    async def replay(
        self, stream_id: str, *, after: int, through: int | None = None, every_kind: bool = False
    ) -> AsyncIterator[ChatMessage]:
        """Every message with ``after < seq <= through`` (or to the newest), oldest first, in batches.

        With ``every_kind`` every entry of the log comes: moderation events, and the stream's
        end entry, last.
        """
        before = through + 1 if through is not None else None
        while True:
            batch = await self._read(
                stream_id, _window(after, before), limit=REPLAY_BATCH, newest_first=False, visible=not every_kind
            )
            for message in batch:
                yield message
            if len(batch) < REPLAY_BATCH:
                return
            after = batch[-1].seq

    async def message_by_dedup_key(self, stream_id: str, dedup_key: str) -> ChatMessage | None:
        """The stream's entry with this dedup key, if it has one."""
        condition = {"stream_id": eq(stream_id), "dedup_key": eq(dedup_key)}
        return await detached(ChatMessage.find_one(condition))

    async def message(self, stream_id: str | None, message_id: str) -> ChatMessage | None:
        """The message (not an end entry) with this id, of the stream ``stream_id`` unless it is
        None; None when there is none (also when ``message_id`` cannot be an id)."""
        object_id = parse_object_id(message_id)
        if object_id is None:
            return None
        condition: dict[str, Any] = {"_id": object_id}
        if stream_id is not None:
            condition["stream_id"] = eq(stream_id)
        raw = await detached(ChatMessage.get_pymongo_collection().find_one(condition))
        message = ChatMessage.model_validate(raw) if raw is not None else None
        return message if message is not None and message.kind in VISIBLE_KINDS else None

    async def delete_message(self, message: ChatMessage, deletion: MessageDeletion) -> ChatMessage | None:
        """Turn a message into its tombstone (content emptied, ``deletion`` set), in one
        conditional write by ``_id``: the tombstone, or None when it was deleted already."""
        raw = await detached(
            ChatMessage.get_pymongo_collection().find_one_and_update(
                {"_id": message.id, "deletion": eq(None)},
                {"$set": {"content": "", "deletion": deletion.model_dump()}},
                return_document=ReturnDocument.AFTER,
            )
        )
        return ChatMessage.model_validate(raw) if raw is not None else None

    async def superlike_count(self, stream_id: str) -> int:
        """How many superlikes the stream has stored."""
        condition = {"stream_id": eq(stream_id), "kind": eq(MessageKind.SUPERLIKE.value)}
        return await detached(count_matching(ChatMessage.get_pymongo_collection(), condition))

    async def _read(
        self, stream_id: str, seq: dict[str, int], *, limit: int, newest_first: bool, visible: bool = False
    ) -> list[ChatMessage]:
        condition: dict[str, Any] = {"stream_id": eq(stream_id)}
        if seq:
            condition["seq"] = seq
        if visible:
            condition["kind"] = {"$in": [kind.value for kind in VISIBLE_KINDS]}
        query = ChatMessage.find(condition)
        query = query.sort([("seq", SortDirection.DESCENDING if newest_first else SortDirection.ASCENDING)]).limit(
            limit
        )
        return await detached(query.to_list())

    async def recent_entries(
        self, stream_id: str, *, through: int, since: datetime, page: int = RECENT_PAGE
    ) -> list[LoggedEntry]:
        """The stream's entries numbered ``through`` or lower, newest first, back to the first
        one created before ``since`` (excluded): each entry's number, kind, sender, time and
        dedup key only, for the rate limit (``ratelimit``).

        Read backwards in pages over the (stream_id, seq) index, the documents left as rows.
        """
        collection = ChatMessage.get_pymongo_collection()
        # The whole sender, not "sender.id" (see ``compat``: dotted projections).
        fields = {"_id": 0, "seq": 1, "kind": 1, "sender": 1, "created_at": 1, "dedup_key": 1}
        entries: list[LoggedEntry] = []
        while through > 0:
            condition = {"stream_id": eq(stream_id), "seq": {"$lte": through}}
            cursor = collection.find(condition, fields).sort("seq", -1).limit(page)
            rows = await detached(cursor.to_list())
            for row in rows:
                created_at = row["created_at"]
                if created_at < since:
                    return entries
                entries.append(
                    LoggedEntry(row["seq"], MessageKind(row["kind"]), row["sender"]["id"], created_at, row["dedup_key"])
                )
            if len(rows) < page:
                break
            through = rows[-1]["seq"] - 1
        return entries

    # -- users -----------------------------------------------------------------------------

    async def insert_user(self, user: User) -> None:
        """Store a new user; ``UsernameTaken`` when the username is."""
        try:
            await detached(user.insert())
        except DuplicateKeyError as exc:
            if is_duplicate_of(exc, "username"):
                raise UsernameTaken() from exc
            raise

    async def user_by_id(self, user_id: str) -> User | None:
        """The user with this id, or None (also when ``user_id`` cannot be an id)."""
        object_id = parse_object_id(user_id)
        if object_id is None:
            return None
        return await detached(User.get(object_id))

    async def user_by_username(self, username: str) -> User | None:
        """The user with exactly this username, or None."""
        return await detached(User.find_one({"username": eq(username)}))

    async def has_users(self) -> bool:
        """Whether any user is stored (false on a fresh database)."""
        return await detached(User.find_one({})) is not None

    # -- moderation ------------------------------------------------------------------------
    #
    # A stream's roles and bans are one ``StreamMember`` document per (stream, user), found
    # by its id: a send reads one document through the ``_id`` index to learn both whether
    # its sender is banned and whether they moderate. Its times are inside its subdocuments
    # (``appointment``, ``ban``): nx-27017 stores a top-level datetime written by ``$set`` as
    # text (see ``compat``). Writers return the member document as it was *before* the write
    # (None when there was none), so the caller can record only what changed.

    @staticmethod
    def _members() -> Any:
        return StreamMember.get_pymongo_collection()

    async def member(self, stream_id: str, user_id: str) -> StreamMember | None:
        """The user's member document in the stream, or None (a plain viewer)."""
        raw = await detached(self._members().find_one({"_id": member_key(stream_id, user_id)}))
        return _member(raw)

    async def moderators(self, stream_id: str) -> list[StreamMember]:
        """The stream's moderators, oldest appointment first."""
        cursor = self._members().find({"stream_id": eq(stream_id), "moderator": eq(True)})
        members = [StreamMember.model_validate(row) for row in await detached(cursor.to_list())]
        return sorted(members, key=lambda m: m.appointment.created_at if m.appointment else _EPOCH)

    async def members(self, stream_id: str) -> list[StreamMember]:
        """Every member document of the stream: its moderators, the users banned from it
        (expired bans included), and the users once either."""
        rows = await detached(self._members().find({"stream_id": eq(stream_id)}).to_list())
        return [StreamMember.model_validate(row) for row in rows]

    async def banned_members(self, stream_id: str) -> list[StreamMember]:
        """The stream's members that have a ban stored (expired ones included)."""
        return [member for member in await self.members(stream_id) if member.ban is not None]

    async def appoint_moderator(
        self, stream_id: str, user: PublicProfile, appointment: Appointment
    ) -> StreamMember | None:
        """Make the user a moderator of the stream, lifting any ban of theirs;
        ``TargetIsModerator`` when they are one already (nothing is changed then)."""
        fields = {
            **_member_identity(stream_id, user),
            "moderator": True,
            "appointment": appointment.model_dump(),
            "ban": None,
        }
        condition = {"_id": member_key(stream_id, user.id), "moderator": eq(False)}
        return await self._set_or_insert(condition, fields)

    async def dismiss_moderator(self, stream_id: str, user_id: str) -> StreamMember | None:
        """Make the user a viewer again, if they moderate: None when they did not."""
        raw = await detached(
            self._members().find_one_and_update(
                {"_id": member_key(stream_id, user_id), "moderator": eq(True)},
                {"$set": {"moderator": False, "appointment": None}},
                return_document=ReturnDocument.BEFORE,
            )
        )
        return _member(raw)

    async def store_ban(
        self, stream_id: str, user: PublicProfile, ban: ChatBanRecord, *, unless_moderator: bool
    ) -> StreamMember | None:
        """Store the user's ban (replacing one they had), making them a viewer.

        With ``unless_moderator`` the ban is stored only if the user does not moderate, in the
        same atomic write: ``TargetIsModerator`` otherwise.
        """
        condition: dict[str, Any] = {"_id": member_key(stream_id, user.id)}
        if unless_moderator:
            condition["moderator"] = eq(False)
        fields = {
            **_member_identity(stream_id, user),
            "moderator": False,
            "appointment": None,
            "ban": ban.model_dump(),
        }
        return await self._set_or_insert(condition, fields)

    async def lift_ban(self, stream_id: str, user_id: str) -> StreamMember | None:
        """Remove the user's ban, if they have one stored."""
        raw = await detached(
            self._members().find_one_and_update(
                {"_id": member_key(stream_id, user_id)},
                {"$set": {"ban": None}},
                return_document=ReturnDocument.BEFORE,
            )
        )
        return _member(raw)

    async def _set_or_insert(self, condition: dict[str, Any], fields: dict[str, Any]) -> StreamMember | None:
        """Set ``fields`` on the member document matching ``condition`` (its ``_id`` and
        ``moderator: False``, or its ``_id`` alone), or insert it when there is none: the
        document as it was before (None when inserted). ``TargetIsModerator`` when one exists
        that the condition does not match.

        Not an upsert: nx-27017 silently does nothing when an upsert's insert collides with an
        existing id, where MongoDB raises; an insert raises on both.
        """
        for _ in range(2):
            raw = await detached(
                self._members().find_one_and_update(condition, {"$set": fields}, return_document=ReturnDocument.BEFORE)
            )
            if raw is not None:
                return _member(raw)
            try:
                await detached(self._members().insert_one({"_id": condition["_id"], **fields}))
            except DuplicateKeyError:
                continue  # it exists now: set it if it matches
            return None
        raise TargetIsModerator()  # it exists, and the condition does not match it

    async def record_moderation(self, action: ModerationAction) -> None:
        """Append an action to the moderation log."""
        await detached(action.insert())

    async def moderation_actions(self, stream_id: str) -> list[ModerationAction]:
        """The stream's moderation log, oldest first."""
        query = ModerationAction.find({"stream_id": eq(stream_id)}).sort("+created_at")
        return await detached(query.to_list())

    async def users_by_ids(self, user_ids: list[str]) -> list[User]:
        """The users with these ids that exist, in the order given."""
        object_ids = [oid for oid in map(parse_object_id, user_ids) if oid is not None]
        if not object_ids:
            return []
        rows = await detached(User.find({"_id": {"$in": object_ids}}).to_list())
        by_id = {str(user.id): user for user in rows}
        return [by_id[user_id] for user_id in user_ids if user_id in by_id]

    # -- viewer presence (see ``viewers``) ---------------------------------------------------

    async def put_presence(self, replica_id: str, counts: dict[str, int], expires_at_ms: int) -> None:
        """Store (or replace) a replica's live subscribers per stream, valid until ``expires_at_ms``."""
        # The id is in the document too: nx-27017 does not take an upsert's id from its filter.
        document = {"_id": replica_id, "counts": counts, "expires_at_ms": expires_at_ms, "updated_at": utcnow()}
        await detached(
            ViewerPresence.get_pymongo_collection().replace_one({"_id": eq(replica_id)}, document, upsert=True)
        )

    async def presences(self) -> list[ViewerPresence]:
        """Every replica's presence, expired ones included (one small document per replica)."""
        return await detached(ViewerPresence.find_all().to_list())

    async def drop_presence(self, replica_id: str) -> None:
        """Delete a replica's presence (when it stops, or has no subscribers left)."""
        await detached(ViewerPresence.get_pymongo_collection().delete_one({"_id": eq(replica_id)}))

    async def drop_expired_presences(self, now_ms: int) -> None:
        """Delete the presence of every replica that let it expire by ``now_ms`` (it died)."""
        await detached(ViewerPresence.get_pymongo_collection().delete_many({"expires_at_ms": {"$lte": now_ms}}))


def _rows(entries: list[ChatMessage]) -> list[dict[str, Any]]:
    """The documents of log entries, each given its id first.

    pydantic's own dump: the same documents as Beanie's encoder writes (a test compares them),
    at a seventh of its cost, on the path of every message.
    """
    for entry in entries:
        if entry.id is None:
            entry.id = PydanticObjectId()
    return [entry.model_dump(by_alias=True) for entry in entries]


def _duplicate_key(error: dict[str, Any]) -> DuplicateKey:
    """Which key a write error of an insert into the log collided on; anything else, a
    failure of the database, is raised as it is."""
    if error.get("code") == _DUPLICATE_KEY:
        if is_duplicate_of(error, "seq"):
            return SeqTaken()
        if is_duplicate_of(error, "dedup_key"):
            return DedupKeyTaken()
    raise OperationFailure(error.get("errmsg", "write error"), error.get("code"), error)


def _member_identity(stream_id: str, user: PublicProfile) -> dict[str, Any]:
    return {"stream_id": stream_id, "user_id": user.id, "user": user.model_dump()}


def _member(raw: dict[str, Any] | None) -> StreamMember | None:
    return StreamMember.model_validate(raw) if raw is not None else None
