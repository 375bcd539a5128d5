"""Beanie documents: how users, streams and chat messages are stored in MongoDB.

References between documents are stored as strings, not ObjectIds (see ``compat``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import ClassVar

from beanie import Document
from pydantic import BaseModel, Field
from pymongo import ASCENDING, IndexModel


def utcnow() -> datetime:
    """Now, in UTC, truncated to the millisecond MongoDB stores, so a value reads back unchanged."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def isoformat_z(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a ``Z``, as the original API wrote times."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


class StreamStatus(StrEnum):
    LIVE = "LIVE"
    ENDED = "ENDED"


class MessageKind(StrEnum):
    TEXT = "TEXT"
    SUPERLIKE = "SUPERLIKE"
    # The end of the stream: the last entry of its log (see ``ChatService.end_stream``).
    STREAM_ENDED = "STREAM_ENDED"
    # Moderation events: entries of the same log, numbered in the same sequence, so one
    # cursor resumes messages and events alike (``chatEvents``). Their ``event`` says what
    # happened; ``messageAdded`` and the history leave them out.
    MESSAGE_DELETED = "MESSAGE_DELETED"
    USER_BANNED = "USER_BANNED"
    USER_UNBANNED = "USER_UNBANNED"
    MODERATOR_ADDED = "MODERATOR_ADDED"
    MODERATOR_REMOVED = "MODERATOR_REMOVED"
    CHAT_SETTINGS_CHANGED = "CHAT_SETTINGS_CHANGED"


class ChatRole(StrEnum):
    """A user's part in one stream's chat (see ``moderation``)."""

    OWNER = "OWNER"
    MODERATOR = "MODERATOR"
    VIEWER = "VIEWER"


class ModerationActionKind(StrEnum):
    """What a moderation action did; each is also the ``MessageKind`` of its event in the log."""

    MODERATOR_ADDED = "MODERATOR_ADDED"
    MODERATOR_REMOVED = "MODERATOR_REMOVED"
    USER_BANNED = "USER_BANNED"
    USER_UNBANNED = "USER_UNBANNED"
    MESSAGE_DELETED = "MESSAGE_DELETED"
    CHAT_SETTINGS_CHANGED = "CHAT_SETTINGS_CHANGED"


# The kinds clients see in history, on ``messageAdded`` and over REST: the messages.
VISIBLE_KINDS = (MessageKind.TEXT, MessageKind.SUPERLIKE)


class ProfilePhoto(BaseModel):
    id: str
    url: str
    type: str = "image"
    variants: dict[str, str] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class PublicProfile(BaseModel):
    """A user's public face, copied into what they create so reads never need a join."""

    id: str
    username: str
    name: str
    surname: str
    profile_photo: ProfilePhoto | None = None
    availability_status: str = "available"


class User(Document):
    username: str
    name: str
    surname: str
    profile_photo: ProfilePhoto | None = None
    availability_status: str = "available"
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "users"
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("username", ASCENDING)], unique=True, name="username_unique")
        ]

    def public_profile(self) -> PublicProfile:
        return PublicProfile(
            id=str(self.id),
            username=self.username,
            name=self.name,
            surname=self.surname,
            profile_photo=self.profile_photo,
            availability_status=self.availability_status,
        )


class SettingsChange(BaseModel):
    """Who last changed a stream's chat settings, and when."""

    by: PublicProfile
    at: datetime


class ChatSettings(BaseModel):
    """The rules of a stream's chat for its viewers (see ``moderation``): the owner and the
    moderators are held to none of them."""

    # Seconds between two messages of one viewer: 0 (off), or 3 to 120.
    slow_mode_seconds: int = 0
    # Off: only the owner and the moderators can send (messages and superlikes).
    chat_enabled: bool = True
    # Terms a viewer's message may not contain (compared normalised: see ``terms``).
    blocked_terms: list[str] = Field(default_factory=list)
    # Set by every change. A subdocument written whole, as nx-27017 stores a datetime that
    # ``$set`` writes by a dotted path as text (see ``compat``).
    last_change: SettingsChange | None = None


class LiveStream(Document):
    title: str
    owner: PublicProfile
    status: StreamStatus = StreamStatus.LIVE
    # Each field is updated by its own path (``ChatStore.update_chat_settings``), so two
    # changes of different settings at once both hold.
    chat_settings: ChatSettings = Field(default_factory=ChatSettings)
    created_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    # The sequence number of the stream's STREAM_ENDED entry, once it has ended: no message
    # of the stream has a higher one.
    ended_seq: int | None = None

    class Settings:
        name = "live_streams"


class MessageDeletion(BaseModel):
    """Who took a message down, when and why. The message keeps its place in the log (its
    sequence number, so cursors stay valid) with its content emptied: a tombstone."""

    deleted_by: PublicProfile
    reason: str | None = None
    deleted_at: datetime
    # The entry's stream and number again, so the change event of the deletion (which carries
    # only the fields it set) names the entry without reading it back.
    stream_id: str
    seq: int


class LogEvent(BaseModel):
    """What a moderation entry of a stream's log records: who did what to whom, and why.

    The entry's ``sender`` is the actor too, and its ``sender_role`` the actor's role.
    """

    actor: PublicProfile
    # The user acted on (banned, unbanned, appointed, dismissed; the deleted message's sender).
    target: PublicProfile | None = None
    reason: str | None = None
    # When a ban lifts itself (a timeout); None for a permanent ban.
    expires_at: datetime | None = None
    # The deleted message: its id and its number in the log.
    message_id: str | None = None
    message_seq: int | None = None
    # The settings a CHAT_SETTINGS_CHANGED entry left in place.
    settings: ChatSettings | None = None


class ChatMessage(Document):
    stream_id: str
    # Per-stream total order: cursors, history pages and resume all key on (stream_id, seq).
    seq: int
    kind: MessageKind
    content: str
    sender: PublicProfile
    client_message_id: str | None = None
    # The sender's role when it was sent; None on messages stored before roles existed (read
    # as OWNER for the stream's owner, else VIEWER: see ``moderation.role_of_message``).
    sender_role: ChatRole | None = None
    # Unique per stream: "c:<sender>:<clientMessageId>" for retries, "s:<sender>" for the one
    # superlike, "end" for the stream's end, else a fresh random key. A plain unique index, because nx-27017 ignores
    # partial indexes (see ``compat``).
    dedup_key: str
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # Set once when the message is deleted (its content is then ""); a subdocument, as
    # nx-27017 stores a top-level datetime written by ``$set`` as text (see ``compat``).
    deletion: MessageDeletion | None = None
    # Set on moderation entries (``MessageKind.MESSAGE_DELETED`` and the others), only.
    event: LogEvent | None = None

    class Settings:
        name = "chat_messages"
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("stream_id", ASCENDING), ("seq", ASCENDING)], unique=True, name="stream_seq"),
            IndexModel([("stream_id", ASCENDING), ("dedup_key", ASCENDING)], unique=True, name="stream_dedup"),
            # Counting a stream's superlikes (its superlikeCount) reads this index only.
            IndexModel([("stream_id", ASCENDING), ("kind", ASCENDING)], name="stream_kind"),
        ]


class ChatBanRecord(BaseModel):
    """A ban of one user from one stream's chat: who, when, why, and until when (None: for good)."""

    banned_by: PublicProfile
    reason: str | None = None
    created_at: datetime
    expires_at: datetime | None = None


class Appointment(BaseModel):
    """A moderator's appointment: by whom and when."""

    appointed_by: PublicProfile
    created_at: datetime


class StreamMember(Document):
    """What one user is in one stream's chat beyond a viewer: a moderator, banned, or neither
    any more. One document per (stream, user), read by its id on every send, so a ban or an
    appointment is seen by every replica at its next send."""

    id: str  # type: ignore[assignment]  # "<stream_id>:<user_id>"
    stream_id: str
    user_id: str
    # The user's profile at the last action on them, for ban listings.
    user: PublicProfile
    # Whether they moderate (indexed, for the list), and their appointment while they do.
    moderator: bool = False
    appointment: Appointment | None = None
    ban: ChatBanRecord | None = None

    class Settings:
        name = "stream_members"
        # A stream's moderators; its bans are read over the prefix.
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("stream_id", ASCENDING), ("moderator", ASCENDING)], name="stream_moderator")
        ]


class ModerationAction(Document):
    """The record of one moderation action that changed something: who did what to whom, when
    and why. Never updated or deleted."""

    stream_id: str
    kind: ModerationActionKind
    actor: PublicProfile
    # The user acted on; None for an action on the stream itself (CHAT_SETTINGS_CHANGED).
    target: PublicProfile | None = None
    reason: str | None = None
    expires_at: datetime | None = None
    # The message a MESSAGE_DELETED action took down (its target is the message's sender).
    message_id: str | None = None
    # The settings a CHAT_SETTINGS_CHANGED action left in place.
    chat_settings: ChatSettings | None = None
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "moderation_actions"
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("stream_id", ASCENDING), ("created_at", ASCENDING)], name="stream_time")
        ]


class ViewerPresence(Document):
    """One replica's live subscribers per stream, which every replica sums into its viewer
    counts (see ``viewers``). A replica rewrites it while it has subscribers and deletes it
    when it stops; one that dies leaves it to expire."""

    id: str  # type: ignore[assignment]  # the replica's id
    # Stream id -> live subscribers on this replica (streams with none are left out).
    counts: dict[str, int] = Field(default_factory=dict)
    # Epoch milliseconds after which nobody counts it.
    expires_at_ms: int
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "viewer_presence"


DOCUMENT_MODELS: list[type[Document]] = [
    User,
    LiveStream,
    ChatMessage,
    StreamMember,
    ModerationAction,
    ViewerPresence,
]
