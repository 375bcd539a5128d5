"""The roster follows a stream's log: pure logic, on entries built in memory."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gql_api.documents import (
    ChatBanRecord,
    ChatMessage,
    ChatRole,
    ChatSettings,
    LogEvent,
    MessageKind,
    PublicProfile,
    StreamMember,
    utcnow,
)
from gql_api.errors import Forbidden
from gql_api.ratelimit import SendLog
from gql_api.roster import NotInOrder, Roster

STREAM, OWNER = "6b0a4881677f265aaefddcba", "owner"


def profile(user_id: str) -> PublicProfile:
    return PublicProfile(id=user_id, username=user_id, name=user_id, surname="Test")


def entry(seq: int, kind: MessageKind, target: str | None = None, sender: str = OWNER, **event) -> ChatMessage:
    # model_construct: Beanie documents need an initialised database to be built otherwise.
    return ChatMessage.model_construct(
        stream_id=STREAM,
        seq=seq,
        kind=kind,
        content="",
        sender=profile(sender),
        dedup_key=f"k{seq}",
        event=LogEvent(actor=profile(OWNER), target=profile(target) if target else None, **event)
        if kind not in (MessageKind.TEXT, MessageKind.STREAM_ENDED)
        else None,
    )


def test_a_roster_read_from_the_documents_holds_their_moderators_bans_and_settings():
    now = utcnow()
    members = [
        StreamMember.model_construct(
            id="a", stream_id=STREAM, user_id="mod", user=profile("mod"), moderator=True, ban=None
        ),
        StreamMember.model_construct(
            id="b",
            stream_id=STREAM,
            user_id="troll",
            user=profile("troll"),
            moderator=False,
            ban=ChatBanRecord(banned_by=profile(OWNER), created_at=now, expires_at=now + timedelta(seconds=60)),
        ),
        StreamMember.model_construct(
            id="c", stream_id=STREAM, user_id="former", user=profile("former"), moderator=False, ban=None
        ),
    ]
    roster = Roster.read(
        STREAM, OWNER, entry(7, MessageKind.TEXT), ChatSettings(slow_mode_seconds=5), members, SendLog(20, 120_000)
    )

    assert roster.position == 7 and roster.end is None
    assert [roster.role(u) for u in (OWNER, "mod", "former", "anyone")] == [
        ChatRole.OWNER,
        ChatRole.MODERATOR,
        ChatRole.VIEWER,
        ChatRole.VIEWER,
    ]
    with pytest.raises(Forbidden):
        roster.admit("troll", now + timedelta(seconds=59))
    assert roster.admit("troll", now + timedelta(seconds=60)) is ChatRole.VIEWER  # the timeout is over
    assert roster.settings.slow_mode_seconds == 5


def test_entries_change_the_roster_in_order():
    roster = Roster.read(STREAM, OWNER, None, ChatSettings(), [], SendLog(20, 120_000))
    now = utcnow()
    roster.apply(entry(1, MessageKind.MODERATOR_ADDED, "mod"))
    roster.apply(entry(2, MessageKind.USER_BANNED, "troll"))
    roster.apply(entry(3, MessageKind.TEXT))
    roster.apply(entry(4, MessageKind.CHAT_SETTINGS_CHANGED, settings=ChatSettings(chat_enabled=False)))
    assert roster.position == 4
    assert roster.role("mod") is ChatRole.MODERATOR and not roster.settings.chat_enabled
    assert roster.is_banned("troll", now + timedelta(days=3650))  # permanent

    roster.apply(entry(5, MessageKind.USER_UNBANNED, "troll"))
    roster.apply(entry(6, MessageKind.MODERATOR_REMOVED, "mod"))
    roster.apply(entry(7, MessageKind.USER_BANNED, "mod", expires_at=now + timedelta(seconds=5)))
    assert not roster.is_banned("troll", now) and roster.role("mod") is ChatRole.VIEWER
    assert roster.is_banned("mod", now) and not roster.is_banned("mod", now + timedelta(seconds=5))
    roster.apply(entry(8, MessageKind.MODERATOR_ADDED, "mod"))  # appointing lifts the ban
    assert not roster.is_banned("mod", now) and roster.role("mod") is ChatRole.MODERATOR

    roster.apply(entry(9, MessageKind.STREAM_ENDED))
    assert roster.end is not None and roster.end.seq == 9


def test_an_entry_applied_again_changes_nothing_and_a_gap_is_refused():
    roster = Roster.read(STREAM, OWNER, None, ChatSettings(), [], SendLog(20, 120_000))
    roster.apply(entry(1, MessageKind.USER_BANNED, "troll"))
    roster.apply(entry(2, MessageKind.USER_UNBANNED, "troll"))
    roster.apply(entry(1, MessageKind.USER_BANNED, "troll"))  # read twice: two readers overlapped
    assert roster.position == 2 and not roster.is_banned("troll", utcnow())

    with pytest.raises(NotInOrder):
        roster.apply(entry(4, MessageKind.USER_BANNED, "troll"))
    assert roster.position == 2 and not roster.is_banned("troll", utcnow())


def test_nothing_follows_the_end():
    roster = Roster.read(STREAM, OWNER, entry(3, MessageKind.STREAM_ENDED), ChatSettings(), [], SendLog(20, 120_000))
    assert roster.end is not None
    with pytest.raises(NotInOrder):
        roster.apply(entry(4, MessageKind.TEXT))


def test_the_roster_notes_the_messages_that_count_against_the_rate_limit():
    roster = Roster.read(STREAM, OWNER, None, ChatSettings(), [], SendLog(2, 120_000))
    roster.apply(entry(1, MessageKind.TEXT, sender="viewer"))
    roster.apply(entry(2, MessageKind.TEXT))  # the owner's: never counted
    roster.apply(entry(3, MessageKind.SUPERLIKE, sender="viewer"))  # one per user anyway
    roster.apply(entry(4, MessageKind.USER_BANNED, "troll"))
    roster.apply(entry(5, MessageKind.TEXT, sender="viewer"))
    roster.apply(entry(6, MessageKind.TEXT, sender="viewer"))
    roster.apply(entry(5, MessageKind.TEXT, sender="viewer"))  # read twice: noted once

    assert roster.sends.position == 6
    assert len(list(roster.sends.of("viewer"))) == 2  # the newest `limit`: older ones refuse nothing
    assert list(roster.sends.of(OWNER)) == []
