"""Who may do what in a stream's chat: its owner, the moderators the owner appoints, and bans.

A stream's owner appoints and dismisses moderators. The owner and the moderators ban users
from the chat, for good or for a while (a timeout, which lifts itself), and lift bans; a
moderator cannot act on the owner or on another moderator. A banned user can still read, but
their messages and superlikes are refused (FORBIDDEN). The owner and the moderators also set
the chat's rules for viewers (``update_settings``): slow mode, chat off, blocked terms.

The state lives in MongoDB (``ChatStore``'s moderation queries), and a send reads it there, so a change made
through one replica holds on every replica from its next send. Every change is recorded in the
moderation log: who did what to whom, when and why.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol

from gql_api import terms
from gql_api.documents import (
    Appointment,
    ChatBanRecord,
    ChatMessage,
    ChatRole,
    ChatSettings,
    LiveStream,
    LogEvent,
    MessageDeletion,
    MessageKind,
    ModerationAction,
    ModerationActionKind,
    PublicProfile,
    SettingsChange,
    StreamMember,
    User,
    utcnow,
)
from gql_api.errors import BadUserInput, ContentBlocked, Forbidden, NotFound
from gql_api.store import ChatStore, TargetIsModerator, member_key

MIN_BAN_SECONDS = 1
MAX_BAN_SECONDS = 14 * 24 * 60 * 60  # a timeout lasts at most 14 days; longer is a ban
MAX_REASON_LENGTH = 500
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Slow mode: off (0), or this many seconds between two messages of one viewer.
MIN_SLOW_MODE_SECONDS = 3
MAX_SLOW_MODE_SECONDS = 120
MAX_BLOCKED_TERMS = 500
MAX_BLOCKED_TERM_LENGTH = 100

Clock = Callable[[], datetime]
StreamLookup = Callable[[str], Awaitable[LiveStream]]


class EventLog(Protocol):
    """Where moderation events go: the stream's log (``ChatService.append_event``)."""

    async def append_event(
        self,
        stream_id: str,
        kind: MessageKind,
        role: ChatRole,
        event: LogEvent,
        dedup_key: str | None = None,
    ) -> ChatMessage | None: ...


def role_of_message(message: ChatMessage, owner_id: str) -> ChatRole:
    """The sender's role when the message was sent: as stored, or, for a message stored before
    roles were, OWNER when the sender owns the stream and VIEWER otherwise."""
    if message.sender_role is not None:
        return message.sender_role
    return ChatRole.OWNER if message.sender.id == owner_id else ChatRole.VIEWER


def _reason(value: str | None) -> str | None:
    """A reason trimmed, or None when there is none; BadUserInput when it is not plain text."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadUserInput(
            "Validation failed: `reason` must be valid Unicode text", details=["reason: invalid Unicode"]
        ) from exc
    if _CONTROL.search(value) or len(value := value.strip()) > MAX_REASON_LENGTH:
        problem = f"must be at most {MAX_REASON_LENGTH} characters, without control characters"
        raise BadUserInput(f"Validation failed: `reason` {problem}", details=[f"reason: {problem}"])
    return value or None


def _invalid(field: str, problem: str) -> BadUserInput:
    return BadUserInput(f"Validation failed: `{field}` {problem}", details=[f"{field}: {problem}"])


def _slow_mode(seconds: int) -> int:
    if seconds != 0 and not MIN_SLOW_MODE_SECONDS <= seconds <= MAX_SLOW_MODE_SECONDS:
        raise _invalid(
            "slowModeSeconds", f"must be 0 (off) or {MIN_SLOW_MODE_SECONDS} to {MAX_SLOW_MODE_SECONDS} seconds"
        )
    return seconds


def _blocked_terms(values: list[str]) -> list[str]:
    """The terms trimmed, each once (the first spelling of those that normalise alike)."""
    problem = (
        f"must hold at most {MAX_BLOCKED_TERMS} terms, each 1 to {MAX_BLOCKED_TERM_LENGTH} "
        "characters after trimming, not all invisible, without control characters"
    )
    kept: dict[str, str] = {}
    for term in values:
        try:
            term.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _invalid("blockedTerms", "must be valid Unicode text (a term holds a lone surrogate)") from exc
        term = term.strip()
        if (
            _CONTROL.search(term)
            or not 1 <= len(term) <= MAX_BLOCKED_TERM_LENGTH
            or all(c.isspace() or unicodedata.category(c) == "Cf" for c in term)
        ):
            raise _invalid("blockedTerms", problem)
        kept.setdefault(terms.normalize(term), term)
    if len(kept) > MAX_BLOCKED_TERMS:
        raise _invalid("blockedTerms", problem)
    return list(kept.values())


def _duration(seconds: int | None) -> timedelta | None:
    if seconds is None:
        return None
    if not MIN_BAN_SECONDS <= seconds <= MAX_BAN_SECONDS:
        problem = f"must be {MIN_BAN_SECONDS} to {MAX_BAN_SECONDS} seconds (14 days), or omitted for a permanent ban"
        raise BadUserInput(f"Validation failed: `durationSeconds` {problem}", details=[f"durationSeconds: {problem}"])
    return timedelta(seconds=seconds)


class Moderation:
    """The rules of roles and bans, over the store's moderation queries.

    ``streams`` finds a stream by the id a client gave (NotFound when there is none);
    ``clock`` tells the time, for bans' start and end (tests pass their own); ``events`` is
    where each action is told as an event of the stream's log (for ``chatEvents``), next to
    its record in the moderation log.
    """

    def __init__(
        self, store: ChatStore, streams: StreamLookup, clock: Clock = utcnow, events: EventLog | None = None
    ) -> None:
        self.store = store
        self._streams = streams
        self._clock = clock
        self._events = events

    def is_active(self, ban: ChatBanRecord | None) -> bool:
        """Whether a stored ban holds now: an expired timeout is no ban at all."""
        return ban is not None and (ban.expires_at is None or ban.expires_at > self._clock())

    async def admit_sender(self, sender: User, stream: LiveStream) -> ChatRole:
        """The sender's role in the stream; Forbidden while they are banned from its chat.

        One read of the sender's member document by id (none for the owner).
        """
        if stream.owner.id == str(sender.id):
            return ChatRole.OWNER
        member = await self.store.member(str(stream.id), str(sender.id))
        if member is None:
            return ChatRole.VIEWER
        if self.is_active(member.ban):
            raise Forbidden("Insufficient permissions: you are banned from this stream's chat")
        return ChatRole.MODERATOR if member.moderator else ChatRole.VIEWER

    async def role(self, user: User, stream: LiveStream) -> ChatRole:
        """The user's role in the stream, banned or not."""
        return await self._role_of(str(user.id), stream)

    async def _role_of(self, user_id: str, stream: LiveStream) -> ChatRole:
        if stream.owner.id == user_id:
            return ChatRole.OWNER
        member = await self.store.member(str(stream.id), user_id)
        return ChatRole.MODERATOR if member is not None and member.moderator else ChatRole.VIEWER

    # -- moderators ------------------------------------------------------------------------

    async def add_moderator(self, actor: User, stream_id: str, user_id: str) -> LiveStream:
        """Appoint a moderator (the owner only); appointing one again changes nothing.

        An appointed user's ban, if any, is lifted (and recorded as lifted).
        """
        stream = await self._owned(actor, stream_id, "appoint moderators")
        target = await self._user(user_id)
        if target.id == stream.owner.id:
            raise BadUserInput("Validation failed: the stream's owner moderates it already")
        now = self._clock()
        appointment = Appointment(appointed_by=actor.public_profile(), created_at=now)
        try:
            before = await self.store.appoint_moderator(str(stream.id), target, appointment)
        except TargetIsModerator:  # a moderator already: their appointment stands as it was
            return stream
        if before is not None and self.is_active(before.ban):
            await self._record(stream, ModerationActionKind.USER_UNBANNED, actor, ChatRole.OWNER, target, now)
        await self._record(stream, ModerationActionKind.MODERATOR_ADDED, actor, ChatRole.OWNER, target, now)
        return stream

    async def remove_moderator(self, actor: User, stream_id: str, user_id: str) -> LiveStream:
        """Dismiss a moderator (the owner only); dismissing a non-moderator changes nothing."""
        stream = await self._owned(actor, stream_id, "remove moderators")
        target = await self._user(user_id)
        if await self.store.dismiss_moderator(str(stream.id), target.id) is not None:
            await self._record(
                stream, ModerationActionKind.MODERATOR_REMOVED, actor, ChatRole.OWNER, target, self._clock()
            )
        return stream

    async def moderators(self, stream_id: str) -> list[User]:
        """The stream's moderators as they are now, in the order they were appointed."""
        members = await self.store.moderators(stream_id)
        return await self.store.users_by_ids([member.user_id for member in members])

    # -- bans ------------------------------------------------------------------------------

    async def ban(
        self,
        actor: User,
        stream_id: str,
        user_id: str,
        duration_seconds: int | None = None,
        reason: str | None = None,
    ) -> StreamMember:
        """Ban a user from the stream's chat: for good, or for ``duration_seconds`` (a timeout).

        Banning a banned user replaces their ban. The owner banning a moderator dismisses them;
        a moderator cannot ban the owner or another moderator (Forbidden), a viewer no one.
        """
        duration, reason = _duration(duration_seconds), _reason(reason)
        stream = await self._streams(stream_id)
        actor_role = await self._moderating(actor, stream, "ban users")
        target = await self._user(user_id)
        if target.id == str(actor.id):
            raise BadUserInput("Validation failed: you cannot ban yourself")
        if target.id == stream.owner.id:
            raise Forbidden("Insufficient permissions: the stream's owner cannot be banned from it")
        now = self._clock()
        record = ChatBanRecord(
            banned_by=actor.public_profile(),
            reason=reason,
            created_at=now,
            expires_at=now + duration if duration is not None else None,
        )
        try:
            before = await self.store.store_ban(
                str(stream.id), target, record, unless_moderator=actor_role is ChatRole.MODERATOR
            )
        except TargetIsModerator as exc:
            raise Forbidden("Insufficient permissions: a moderator cannot ban another moderator") from exc
        if before is not None and before.moderator:
            await self._record(stream, ModerationActionKind.MODERATOR_REMOVED, actor, actor_role, target, now, reason)
        await self._record(
            stream, ModerationActionKind.USER_BANNED, actor, actor_role, target, now, reason, record.expires_at
        )
        key = str(stream.id)
        return StreamMember(id=member_key(key, target.id), stream_id=key, user_id=target.id, user=target, ban=record)

    async def unban(self, actor: User, stream_id: str, user_id: str) -> bool:
        """Lift a user's ban (the owner and moderators): True when one held, False when none did."""
        stream = await self._streams(stream_id)
        role = await self._moderating(actor, stream, "unban users")
        target = await self._user(user_id)
        before = await self.store.lift_ban(str(stream.id), target.id)
        if before is None or not self.is_active(before.ban):
            return False
        await self._record(stream, ModerationActionKind.USER_UNBANNED, actor, role, target, self._clock())
        return True

    async def bans(self, actor: User, stream_id: str) -> list[StreamMember]:
        """The bans holding in the stream now, oldest first (the owner and moderators only)."""
        stream = await self._streams(stream_id)
        await self._moderating(actor, stream, "see bans")
        now = self._clock()
        members = [m for m in await self.store.banned_members(str(stream.id)) if self.is_active(m.ban)]
        return sorted(members, key=lambda m: m.ban.created_at if m.ban else now)

    async def actions(self, stream_id: str) -> list[ModerationAction]:
        """The stream's moderation log, oldest first."""
        return await self.store.moderation_actions(str((await self._streams(stream_id)).id))

    # -- chat settings ---------------------------------------------------------------------

    async def update_settings(
        self,
        actor: User,
        stream_id: str,
        *,
        slow_mode_seconds: int | None = None,
        chat_enabled: bool | None = None,
        blocked_terms: list[str] | None = None,
    ) -> tuple[LiveStream, bool]:
        """Change the stream's chat settings (the owner and moderators); None keeps a setting
        as it is. The stream as it is after, and whether anything changed (a change is
        recorded; setting what is set already is not)."""
        fields: dict[str, object] = {}
        if slow_mode_seconds is not None:
            fields["slow_mode_seconds"] = _slow_mode(slow_mode_seconds)
        if chat_enabled is not None:
            fields["chat_enabled"] = chat_enabled
        if blocked_terms is not None:
            fields["blocked_terms"] = _blocked_terms(blocked_terms)
        stream = await self._streams(stream_id)
        role = await self._moderating(actor, stream, "change the chat settings")
        changes = {name: value for name, value in fields.items() if getattr(stream.chat_settings, name) != value}
        if not changes:
            return stream, False
        now = self._clock()
        changes["last_change"] = SettingsChange(by=actor.public_profile(), at=now).model_dump()
        updated = await self.store.update_chat_settings(str(stream.id), changes)
        if updated is None:  # pragma: no cover - streams are never deleted
            raise NotFound("Resource not found: no live stream has this id")
        await self.store.record_moderation(
            ModerationAction(
                stream_id=str(stream.id),
                kind=ModerationActionKind.CHAT_SETTINGS_CHANGED,
                actor=actor.public_profile(),
                chat_settings=updated.chat_settings,
                created_at=now,
            )
        )
        if self._events is not None:
            event = LogEvent(actor=actor.public_profile(), settings=updated.chat_settings)
            await self._events.append_event(str(stream.id), MessageKind.CHAT_SETTINGS_CHANGED, role, event)
        return updated, True

    @staticmethod
    def hold_to_settings(role: ChatRole, settings: ChatSettings, content: str | None = None) -> None:
        """Refuse a viewer's send the settings forbid: any while the chat is off (Forbidden),
        a text ``content`` holding a blocked term (ContentBlocked). The owner and the
        moderators are held to no setting; slow mode is the rate limiter's (``ChatService``)."""
        if role is not ChatRole.VIEWER:
            return
        if not settings.chat_enabled:
            raise Forbidden(
                "Insufficient permissions: the chat of this stream is off; only its owner and moderators can send"
            )
        if content is not None and terms.blocked_terms(tuple(settings.blocked_terms)).found_in(content):
            raise ContentBlocked("Content blocked: the message holds a term this stream's chat does not allow")

    # -- messages --------------------------------------------------------------------------

    async def delete_message(
        self, actor: User, stream_id: str | None, message_id: str, reason: str | None = None
    ) -> tuple[ChatMessage, bool]:
        """Delete a message (of the stream ``stream_id``, or of any when it is None): its
        sender, the owner, or a moderator (not of the owner's or a moderator's message, by
        their role now). The tombstone, and whether this call deleted it (False when it was
        deleted already: deleting again changes nothing)."""
        reason = _reason(reason)
        if stream_id is not None:
            await self._streams(stream_id)  # NotFound for the stream before the message
        message = await self.store.message(stream_id, message_id)
        if message is None:
            raise NotFound("Resource not found: no chat message has this id")
        stream = await self._streams(message.stream_id)
        key = str(stream.id)
        if message.sender.id != str(actor.id):
            role = await self._moderating(actor, stream, "delete others' messages")
            if message.sender.id == stream.owner.id:
                raise Forbidden("Insufficient permissions: only the owner can delete the owner's messages")
            if (
                stream.owner.id != str(actor.id)
                and await self._role_of(message.sender.id, stream) is ChatRole.MODERATOR
            ):
                raise Forbidden("Insufficient permissions: a moderator cannot delete another moderator's message")
        else:
            role = await self.role(actor, stream)
        if message.kind is not MessageKind.TEXT:
            raise BadUserInput("Validation failed: only text messages can be deleted")
        if message.deletion is not None:
            # Told again (once only, by its key) in case the call that deleted it stopped
            # before it told the event.
            await self._tell_deleted(message, message.deletion, role)
            return message, False
        now = self._clock()
        deletion = MessageDeletion(
            deleted_by=actor.public_profile(), reason=reason, deleted_at=now, stream_id=key, seq=message.seq
        )
        tombstone = await self.store.delete_message(message, deletion)
        if tombstone is None:  # a concurrent call deleted it first
            again = await self.store.message(key, message_id)
            if again is None:  # pragma: no cover - messages are never removed
                raise NotFound("Resource not found: no chat message has this id")
            return again, False
        await self.store.record_moderation(
            ModerationAction(
                stream_id=key,
                kind=ModerationActionKind.MESSAGE_DELETED,
                actor=actor.public_profile(),
                target=message.sender,
                reason=reason,
                message_id=str(message.id),
                created_at=now,
            )
        )
        await self._tell_deleted(message, deletion, role)
        return tombstone, True

    async def _tell_deleted(self, message: ChatMessage, deletion: MessageDeletion, role: ChatRole) -> None:
        """Append the MESSAGE_DELETED event of a message, once (its key names the message)."""
        if self._events is None:
            return
        event = LogEvent(
            actor=deletion.deleted_by,
            target=message.sender,
            reason=deletion.reason,
            message_id=str(message.id),
            message_seq=message.seq,
        )
        await self._events.append_event(
            message.stream_id, MessageKind.MESSAGE_DELETED, role, event, dedup_key=f"d:{message.id}"
        )

    # -- internals -------------------------------------------------------------------------

    async def _owned(self, actor: User, stream_id: str, what: str) -> LiveStream:
        stream = await self._streams(stream_id)
        if stream.owner.id != str(actor.id):
            raise Forbidden(f"Insufficient permissions: only the stream's owner can {what}")
        return stream

    async def _moderating(self, actor: User, stream: LiveStream, what: str) -> ChatRole:
        role = await self.role(actor, stream)
        if role is ChatRole.VIEWER:
            raise Forbidden(f"Insufficient permissions: only the stream's owner and moderators can {what}")
        return role

    async def _user(self, user_id: str) -> PublicProfile:
        user = await self.store.user_by_id(user_id)
        if user is None:
            raise NotFound("Resource not found: no user has this id")
        return user.public_profile()

    async def _record(
        self,
        stream: LiveStream,
        kind: ModerationActionKind,
        actor: User,
        role: ChatRole,
        target: PublicProfile,
        at: datetime,
        reason: str | None = None,
        expires_at: datetime | None = None,
    ) -> None:
        """Record an action in the moderation log, then tell it as an event of the stream's log."""
        actor_profile = actor.public_profile()
        stream_id = str(stream.id)
        await self.store.record_moderation(
            ModerationAction(
                stream_id=stream_id,
                kind=kind,
                actor=actor_profile,
                target=target,
                reason=reason,
                expires_at=expires_at,
                created_at=at,
            )
        )
        if self._events is not None:
            event = LogEvent(actor=actor_profile, target=target, reason=reason, expires_at=expires_at)
            await self._events.append_event(stream_id, MessageKind(kind.value), role, event)
