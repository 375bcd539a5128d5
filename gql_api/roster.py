"""The chat rules of each stream this process writes to: who moderates it, who is banned from
its chat, and its chat settings, kept exact by following the stream's log.

Every change of them is stored first (the member or the stream document: see ``moderation``)
and then told as an entry of the stream's log. A ``Roster`` is read once: the log's newest
number first, then the documents, so it holds every change told up to that number (and
perhaps a few later ones, which their entries then set again to what they already are). From
there it follows the log: each entry after its ``position`` is applied in order, whether this
process wrote it or read it back when a write found its number taken.

The roster also holds each user's recent messages (``ratelimit.SendLog``), which are entries
of the same log: the rate limit and slow mode are counted from it.

The send path (``ChatService``) checks a message against the roster early, to refuse what it
can at once, and again when the message is numbered, once the roster has applied every entry
before that number. So no message is stored after an entry that forbids it: a ban or a
settings change holds from the next number on, on every replica, and so does the rate limit,
without a read or a write per send.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from gql_api.documents import ChatMessage, ChatRole, ChatSettings, MessageKind, StreamMember
from gql_api.errors import Forbidden
from gql_api.ratelimit import SendLog

# A roster is read again from the documents after this long, whatever it has followed: a
# change whose maker stopped between storing it and telling it (its log entry is missing) is
# seen within this time.
REFRESH_SECONDS = 60.0


class NotInOrder(Exception):
    """An entry that is not the next one after the roster's position was offered to it."""


@dataclass
class Roster:
    """One stream's moderators, bans and chat settings as of its log entry ``position``."""

    stream_id: str
    owner_id: str
    position: int
    settings: ChatSettings
    # The users' recent messages, as of ``position`` too.
    sends: SendLog
    moderators: set[str] = field(default_factory=set)
    # User id -> when their ban lifts itself (None: never).
    bans: dict[str, datetime | None] = field(default_factory=dict)
    # The stream's end entry, once the roster has reached it: nothing follows it.
    end: ChatMessage | None = None
    read_at: float = field(default_factory=time.monotonic)

    @classmethod
    def read(
        cls,
        stream_id: str,
        owner_id: str,
        newest: ChatMessage | None,
        settings: ChatSettings,
        members: list[StreamMember],
        sends: SendLog,
    ) -> Roster:
        """A roster from the stream's newest log entry and, read after it, its documents; its
        ``sends`` is the caller's to bring up to the same entry."""
        roster = cls(stream_id, owner_id, newest.seq if newest is not None else 0, settings, sends)
        if newest is not None and newest.kind is MessageKind.STREAM_ENDED:
            roster.end = newest
        for member in members:
            if member.moderator:
                roster.moderators.add(member.user_id)
            if member.ban is not None:
                roster.bans[member.user_id] = member.ban.expires_at
        return roster

    @property
    def stale(self) -> bool:
        """Whether it is time to read the roster again (see ``REFRESH_SECONDS``)."""
        return time.monotonic() - self.read_at > REFRESH_SECONDS

    def role(self, user_id: str) -> ChatRole:
        """The user's role in the stream, banned or not."""
        if user_id == self.owner_id:
            return ChatRole.OWNER
        return ChatRole.MODERATOR if user_id in self.moderators else ChatRole.VIEWER

    def counts(self, kind: MessageKind, sender_id: str) -> bool:
        """Whether an entry counts against its sender's rate limit: a text message, but not
        the owner's (superlikes do not count: there is one per user anyway)."""
        return kind is MessageKind.TEXT and sender_id != self.owner_id

    def note_send(self, seq: int, kind: MessageKind, sender_id: str, created_at: datetime, dedup_key: str) -> None:
        """Follow the log by one entry for the rate limit only (see ``SendLog.note``)."""
        if self.counts(kind, sender_id):
            self.sends.note(seq, sender_id, int(created_at.timestamp() * 1000), dedup_key)
        else:
            self.sends.note(seq)

    def is_banned(self, user_id: str, now: datetime) -> bool:
        """Whether a ban of the user holds at ``now`` (a timeout holds until it expires)."""
        if user_id not in self.bans:
            return False
        expires_at = self.bans[user_id]
        return expires_at is None or expires_at > now

    def admit(self, user_id: str, now: datetime) -> ChatRole:
        """The role the user sends in; Forbidden while they are banned."""
        if self.is_banned(user_id, now):
            raise Forbidden("Insufficient permissions: you are banned from this stream's chat")
        return self.role(user_id)

    def apply(self, entry: ChatMessage) -> None:
        """Follow the log by one entry: the next one (``NotInOrder`` for one further on), or
        one applied already, which changes nothing (two readers of the log may overlap)."""
        if entry.stream_id != self.stream_id:
            raise NotInOrder(f"an entry of {entry.stream_id} offered to the roster of {self.stream_id}")
        if entry.seq <= self.position:
            return
        if entry.seq != self.position + 1 or self.end is not None:
            raise NotInOrder(f"entry {entry.seq} of {entry.stream_id} after {self.position}")
        self.position = entry.seq
        self.note_send(entry.seq, entry.kind, entry.sender.id, entry.created_at, entry.dedup_key)
        event, kind = entry.event, entry.kind
        if kind is MessageKind.STREAM_ENDED:
            self.end = entry
        if event is None:
            return
        target = event.target.id if event.target is not None else None
        if kind is MessageKind.CHAT_SETTINGS_CHANGED and event.settings is not None:
            self.settings = event.settings
        elif target is None:
            return
        elif kind is MessageKind.USER_BANNED:
            self.bans[target] = event.expires_at
            self.moderators.discard(target)
        elif kind is MessageKind.USER_UNBANNED:
            self.bans.pop(target, None)
        elif kind is MessageKind.MODERATOR_ADDED:
            self.moderators.add(target)
            self.bans.pop(target, None)
        elif kind is MessageKind.MODERATOR_REMOVED:
            self.moderators.discard(target)
