"""Roles and bans over real HTTP (GraphQL and REST) on the real database: moderators, the role
each message carries, bans and timeouts, and the record of every action."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import httpx
import pytest

from gql_api.app import create_app
from gql_api.compat import eq
from gql_api.documents import ChatMessage, ChatRole, ModerationActionKind, utcnow
from gql_api.errors import BadUserInput, Forbidden
from gql_api.moderation import MAX_BAN_SECONDS
from gql_api.service import ChatService
from gql_api.store import ChatStore
from tests.conftest import GraphQLClient, serve

ADD = "mutation($s: ID!, $u: ID!) { addModerator(streamId: $s, userId: $u) { id moderators { id username } } }"
REMOVE = "mutation($s: ID!, $u: ID!) { removeModerator(streamId: $s, userId: $u) { id moderators { id } } }"
MODERATORS = "query($s: ID!) { liveStream(id: $s) { moderators { id username } } }"
BAN = """
mutation($s: ID!, $u: ID!, $d: Int, $r: String) {
  banUser(streamId: $s, userId: $u, durationSeconds: $d, reason: $r) {
    id streamId reason createdAt expiresAt user { userId username } bannedBy { userId username }
  }
}
"""
UNBAN = "mutation($s: ID!, $u: ID!) { unbanUser(streamId: $s, userId: $u) }"
BANS = "query($s: ID!) { chatBans(streamId: $s) { user { userId } bannedBy { userId } reason expiresAt } }"
SEND = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id content senderRole } }"
SUPERLIKE = "mutation($s: ID!) { sendSuperlike(streamId: $s) { id senderRole } }"
HISTORY = "query($s: ID!) { chatMessages(streamId: $s) { edges { node { content senderRole sender { userId } } } } }"
UNKNOWN_ID = "64d15f9e2e6c8f4d5a123000"


def ids(users) -> list[str]:
    return [str(user.id) for user in users]


@pytest.fixture
async def room(make_user, make_stream, client_for):
    """A stream with its owner, a moderator and two viewers, and a client for each."""
    owner, moderator, viewer, other = [await make_user() for _ in range(4)]
    stream = await make_stream(owner)
    await client_for(owner).data(ADD, {"s": str(stream.id), "u": str(moderator.id)})

    class Room:
        pass

    room = Room()
    room.stream, room.s = stream, str(stream.id)
    room.owner, room.moderator, room.viewer, room.other = owner, moderator, viewer, other
    room.as_owner, room.as_moderator = client_for(owner), client_for(moderator)
    room.as_viewer, room.as_other = client_for(viewer), client_for(other)
    return room


def code(error: dict) -> str:
    return error["extensions"]["code"]


# -- moderators ----------------------------------------------------------------------------------


async def test_the_owner_appoints_and_dismisses_moderators_idempotently(make_user, make_stream, client_for):
    owner, first, second = await make_user(), await make_user(), await make_user()
    stream = await make_stream(owner)
    client = client_for(owner)
    variables = {"s": str(stream.id)}

    for _ in range(2):
        added = (await client.data(ADD, {**variables, "u": str(first.id)}))["addModerator"]
        assert [m["id"] for m in added["moderators"]] == [str(first.id)]
    await client.data(ADD, {**variables, "u": str(second.id).upper()})  # any spelling of the id
    shown = (await client_for(second).data(MODERATORS, variables))["liveStream"]["moderators"]
    assert shown == [
        {"id": str(first.id), "username": first.username},
        {"id": str(second.id), "username": second.username},
    ]

    for _ in range(2):
        removed = (await client.data(REMOVE, {**variables, "u": str(first.id)}))["removeModerator"]
        assert removed["moderators"] == [{"id": str(second.id)}]
    actions = await ChatStore().moderation_actions(str(stream.id))
    assert [a.kind for a in actions] == [
        ModerationActionKind.MODERATOR_ADDED,
        ModerationActionKind.MODERATOR_ADDED,
        ModerationActionKind.MODERATOR_REMOVED,
    ]  # the repeats changed nothing, so recorded nothing
    assert {a.actor.id for a in actions} == {str(owner.id)}


async def test_only_the_owner_appoints_or_dismisses(room):
    for client in (room.as_moderator, room.as_viewer):
        for mutation in (ADD, REMOVE):
            error = await client.error(mutation, {"s": room.s, "u": str(room.other.id)})
            assert error["extensions"] == {"code": "FORBIDDEN", "statusCode": 403}
            assert error["message"].startswith("Insufficient permissions")
    shown = (await room.as_owner.data(MODERATORS, {"s": room.s}))["liveStream"]["moderators"]
    assert [m["id"] for m in shown] == [str(room.moderator.id)]


@pytest.mark.parametrize("mutation", [ADD, REMOVE])
async def test_moderator_changes_name_a_stream_and_a_user_that_exist(room, mutation):
    for stream_id, user_id in [(UNKNOWN_ID, str(room.viewer.id)), (room.s, UNKNOWN_ID), (room.s, "nope")]:
        error = await room.as_owner.error(mutation, {"s": stream_id, "u": user_id})
        assert code(error) == "NOT_FOUND", (stream_id, user_id)


async def test_the_owner_cannot_be_their_own_moderator(room):
    error = await room.as_owner.error(ADD, {"s": room.s, "u": str(room.owner.id)})
    assert code(error) == "BAD_USER_INPUT"


# -- roles on messages ---------------------------------------------------------------------------


async def test_every_message_carries_its_senders_role_as_it_was_when_sent(room):
    sent = [
        (await room.as_owner.data(SEND, {"s": room.s, "c": "owner"}))["sendChatMessage"]["senderRole"],
        (await room.as_moderator.data(SEND, {"s": room.s, "c": "mod"}))["sendChatMessage"]["senderRole"],
        (await room.as_viewer.data(SEND, {"s": room.s, "c": "viewer"}))["sendChatMessage"]["senderRole"],
        (await room.as_moderator.data(SUPERLIKE, {"s": room.s}))["sendSuperlike"]["senderRole"],
    ]
    assert sent == ["OWNER", "MODERATOR", "VIEWER", "MODERATOR"]

    await room.as_owner.data(REMOVE, {"s": room.s, "u": str(room.moderator.id)})
    await room.as_owner.data(ADD, {"s": room.s, "u": str(room.viewer.id)})
    await room.as_moderator.data(SEND, {"s": room.s, "c": "ex-mod"})
    await room.as_viewer.data(SEND, {"s": room.s, "c": "new mod"})

    history = (await room.as_other.data(HISTORY, {"s": room.s}))["chatMessages"]["edges"]
    roles = [(e["node"]["content"], e["node"]["senderRole"]) for e in history]
    assert roles == [
        ("owner", "OWNER"),
        ("mod", "MODERATOR"),
        ("viewer", "VIEWER"),
        ("", "MODERATOR"),
        ("ex-mod", "VIEWER"),
        ("new mod", "MODERATOR"),
    ]


async def test_a_message_stored_before_roles_existed_reads_as_owner_or_viewer(room):
    await room.as_owner.data(SEND, {"s": room.s, "c": "old owner"})
    await room.as_moderator.data(SEND, {"s": room.s, "c": "old mod"})
    collection = ChatMessage.get_pymongo_collection()
    await collection.update_many({"stream_id": eq(room.s)}, {"$unset": {"sender_role": ""}})

    history = (await room.as_viewer.data(HISTORY, {"s": room.s}))["chatMessages"]["edges"]

    # A moderator's old message cannot say they moderated then: VIEWER, never more.
    assert [(e["node"]["content"], e["node"]["senderRole"]) for e in history] == [
        ("old owner", "OWNER"),
        ("old mod", "VIEWER"),
    ]


# -- bans ----------------------------------------------------------------------------------------


async def test_a_banned_user_cannot_send_or_superlike_but_can_read(room, server, http):
    await room.as_viewer.data(SEND, {"s": room.s, "c": "before the ban"})
    banned = (await room.as_moderator.data(BAN, {"s": room.s, "u": str(room.viewer.id), "r": "spam"}))["banUser"]
    assert banned["user"] == {"userId": str(room.viewer.id), "username": room.viewer.username}
    assert banned["bannedBy"]["userId"] == str(room.moderator.id)
    assert (banned["reason"], banned["expiresAt"], banned["streamId"]) == ("spam", None, room.s)

    for mutation, variables in [(SEND, {"s": room.s, "c": "after"}), (SUPERLIKE, {"s": room.s})]:
        error = await room.as_viewer.error(mutation, variables)
        assert error["extensions"] == {"code": "FORBIDDEN", "statusCode": 403}
        assert error["message"] == "Insufficient permissions: you are banned from this stream's chat"
    headers = {"Authorization": server.token(room.viewer)}
    for path, body in [("messages", {"content": "after"}), ("superlike", None)]:
        response = await http.post(f"/api/v1/live-stream/{room.s}/chat/{path}", json=body, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["errors"] == ["Insufficient permissions", "you are banned from this stream's chat"]

    history = (await room.as_viewer.data(HISTORY, {"s": room.s}))["chatMessages"]["edges"]
    assert [e["node"]["content"] for e in history] == ["before the ban"]
    rest = await http.get(f"/api/v1/live-stream/{room.s}/chat/messages", headers=headers)
    assert rest.status_code == 200 and [m["content"] for m in rest.json()["messages"]] == ["before the ban"]
    # Others still send.
    assert (await room.as_other.data(SEND, {"s": room.s, "c": "fine"}))["sendChatMessage"]["content"] == "fine"


async def test_unbanning_lets_the_user_send_again_and_says_whether_a_ban_held(room):
    variables = {"s": room.s, "u": str(room.viewer.id)}
    await room.as_owner.data(BAN, variables)
    assert code(await room.as_viewer.error(SEND, {"s": room.s, "c": "x"})) == "FORBIDDEN"

    assert (await room.as_moderator.data(UNBAN, variables))["unbanUser"] is True
    assert (await room.as_owner.data(UNBAN, variables))["unbanUser"] is False
    assert (await room.as_owner.data(UNBAN, {"s": room.s, "u": str(room.other.id)}))["unbanUser"] is False

    assert (await room.as_viewer.data(SEND, {"s": room.s, "c": "back"}))["sendChatMessage"]["senderRole"] == "VIEWER"


async def test_a_moderator_cannot_ban_the_owner_or_another_moderator(room, make_user, client_for):
    second = await make_user()
    await room.as_owner.data(ADD, {"s": room.s, "u": str(second.id)})

    for target in (room.owner, second):
        error = await room.as_moderator.error(BAN, {"s": room.s, "u": str(target.id)})
        assert error["extensions"] == {"code": "FORBIDDEN", "statusCode": 403}
    assert (await room.as_owner.data(BANS, {"s": room.s}))["chatBans"] == []
    for target in (room.owner, second):
        sent = await client_for(target).data(SEND, {"s": room.s, "c": "still here"})
        assert sent["sendChatMessage"]["senderRole"] in {"OWNER", "MODERATOR"}
    # Still a moderator, with nothing recorded against them.
    assert str(second.id) in [
        m["id"] for m in (await room.as_owner.data(MODERATORS, {"s": room.s}))["liveStream"]["moderators"]
    ]


async def test_viewers_cannot_ban_unban_or_see_bans(room):
    await room.as_owner.data(BAN, {"s": room.s, "u": str(room.other.id)})
    for operation, variables in [
        (BAN, {"s": room.s, "u": str(room.other.id)}),
        (UNBAN, {"s": room.s, "u": str(room.other.id)}),
        (BANS, {"s": room.s}),
    ]:
        error = await room.as_viewer.error(operation, variables)
        assert error["extensions"] == {"code": "FORBIDDEN", "statusCode": 403}, operation
    assert code(await room.as_other.error(SEND, {"s": room.s, "c": "still banned"})) == "FORBIDDEN"


async def test_no_one_bans_the_owner_or_themselves(room):
    assert code(await room.as_owner.error(BAN, {"s": room.s, "u": str(room.owner.id)})) == "BAD_USER_INPUT"
    assert code(await room.as_moderator.error(BAN, {"s": room.s, "u": str(room.moderator.id)})) == "BAD_USER_INPUT"
    assert code(await room.as_moderator.error(BAN, {"s": room.s, "u": str(room.owner.id)})) == "FORBIDDEN"


@pytest.mark.parametrize(("stream_id", "user_id"), [(UNKNOWN_ID, None), (None, UNKNOWN_ID), (None, "nope")])
async def test_bans_name_a_stream_and_a_user_that_exist(room, stream_id, user_id):
    variables = {"s": stream_id or room.s, "u": user_id or str(room.viewer.id)}
    assert code(await room.as_owner.error(BAN, variables)) == "NOT_FOUND"
    assert code(await room.as_owner.error(UNBAN, variables)) == "NOT_FOUND"


@pytest.mark.parametrize("duration", [0, -1, MAX_BAN_SECONDS + 1])
async def test_a_timeout_is_1_second_to_14_days(room, duration):
    error = await room.as_owner.error(BAN, {"s": room.s, "u": str(room.viewer.id), "d": duration})
    assert code(error) == "BAD_USER_INPUT" and "durationSeconds" in error["message"]
    assert (await room.as_owner.data(BANS, {"s": room.s}))["chatBans"] == []


async def test_a_reason_is_at_most_500_characters_of_text(room):
    variables = {"s": room.s, "u": str(room.viewer.id)}
    assert code(await room.as_owner.error(BAN, {**variables, "r": "x" * 501})) == "BAD_USER_INPUT"
    assert code(await room.as_owner.error(BAN, {**variables, "r": "bad\x00"})) == "BAD_USER_INPUT"
    banned = (await room.as_owner.data(BAN, {**variables, "r": "  " + "y" * 500 + " "}))["banUser"]
    assert banned["reason"] == "y" * 500


async def test_chat_bans_lists_the_bans_holding_with_who_when_and_why(room):
    before = utcnow()
    await room.as_owner.data(BAN, {"s": room.s, "u": str(room.viewer.id), "r": "abuse"})
    timed = (await room.as_moderator.data(BAN, {"s": room.s, "u": str(room.other.id), "d": 600}))["banUser"]
    created = datetime.fromisoformat(timed["createdAt"])
    assert created >= before
    assert datetime.fromisoformat(timed["expiresAt"]) - created == timedelta(seconds=600)

    for client in (room.as_owner, room.as_moderator):
        bans = (await client.data(BANS, {"s": room.s}))["chatBans"]
        assert bans == [
            {
                "user": {"userId": str(room.viewer.id)},
                "bannedBy": {"userId": str(room.owner.id)},
                "reason": "abuse",
                "expiresAt": None,
            },
            {
                "user": {"userId": str(room.other.id)},
                "bannedBy": {"userId": str(room.moderator.id)},
                "reason": None,
                "expiresAt": timed["expiresAt"],
            },
        ]

    await room.as_owner.data(UNBAN, {"s": room.s, "u": str(room.viewer.id)})
    assert [b["user"]["userId"] for b in (await room.as_owner.data(BANS, {"s": room.s}))["chatBans"]] == [
        str(room.other.id)
    ]


async def test_a_one_second_timeout_lifts_itself(room):
    await room.as_moderator.data(BAN, {"s": room.s, "u": str(room.viewer.id), "d": 1})
    assert code(await room.as_viewer.error(SEND, {"s": room.s, "c": "too soon"})) == "FORBIDDEN"

    # Bounded poll on the clock (the injected-clock test below covers the rule itself).
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        body = await room.as_viewer.execute(SEND, {"s": room.s, "c": "free"})
        if "errors" not in body:
            break
        assert code(body["errors"][0]) == "FORBIDDEN"
        assert asyncio.get_running_loop().time() < deadline, "the timeout never lifted"
        await asyncio.sleep(0.2)
    assert (await room.as_owner.data(BANS, {"s": room.s}))["chatBans"] == []
    assert (await room.as_owner.data(UNBAN, {"s": room.s, "u": str(room.viewer.id)}))["unbanUser"] is False


async def test_the_owner_banning_a_moderator_dismisses_them(room):
    await room.as_owner.data(BAN, {"s": room.s, "u": str(room.moderator.id), "r": "rogue"})

    assert (await room.as_owner.data(MODERATORS, {"s": room.s}))["liveStream"]["moderators"] == []
    assert code(await room.as_moderator.error(SEND, {"s": room.s, "c": "x"})) == "FORBIDDEN"
    assert code(await room.as_moderator.error(BAN, {"s": room.s, "u": str(room.viewer.id)})) == "FORBIDDEN"
    kinds = [a.kind for a in await ChatStore().moderation_actions(room.s)]
    assert kinds[-2:] == [ModerationActionKind.MODERATOR_REMOVED, ModerationActionKind.USER_BANNED]


async def test_appointing_a_banned_user_lifts_their_ban(room):
    await room.as_owner.data(BAN, {"s": room.s, "u": str(room.viewer.id)})
    await room.as_owner.data(ADD, {"s": room.s, "u": str(room.viewer.id)})

    assert (await room.as_owner.data(BANS, {"s": room.s}))["chatBans"] == []
    assert (await room.as_viewer.data(SEND, {"s": room.s, "c": "hi"}))["sendChatMessage"]["senderRole"] == "MODERATOR"


async def test_every_change_is_recorded_with_who_when_and_why(room):
    start = utcnow()
    await room.as_moderator.data(BAN, {"s": room.s, "u": str(room.viewer.id), "d": 60, "r": "caps"})
    await room.as_owner.data(UNBAN, {"s": room.s, "u": str(room.viewer.id)})

    actions = await ChatStore().moderation_actions(room.s)
    assert [(a.kind, a.actor.id, a.target.id, a.reason) for a in actions] == [
        (ModerationActionKind.MODERATOR_ADDED, str(room.owner.id), str(room.moderator.id), None),
        (ModerationActionKind.USER_BANNED, str(room.moderator.id), str(room.viewer.id), "caps"),
        (ModerationActionKind.USER_UNBANNED, str(room.owner.id), str(room.viewer.id), None),
    ]
    banned = actions[1]
    assert banned.created_at >= start and banned.expires_at == banned.created_at + timedelta(seconds=60)


async def test_a_ban_made_through_one_replica_holds_on_another_at_once(room, server, make_settings):
    async with (
        serve(create_app(make_settings(), database=server.services.database)) as other,
        httpx.AsyncClient(base_url=other.url, timeout=10) as http,
    ):
        viewer_there = GraphQLClient(http, other.token(room.viewer))
        assert (await viewer_there.data(SEND, {"s": room.s, "c": "hi"}))["sendChatMessage"]
        await room.as_moderator.data(BAN, {"s": room.s, "u": str(room.viewer.id)})
        assert code(await viewer_there.error(SEND, {"s": room.s, "c": "x"})) == "FORBIDDEN"
        await room.as_owner.data(UNBAN, {"s": room.s, "u": str(room.viewer.id)})
        assert (await viewer_there.data(SEND, {"s": room.s, "c": "back"}))["sendChatMessage"]


# -- the rules on an injected clock --------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


def _service(server, clock: FakeClock) -> ChatService:
    """A chat service over the server's database and hub, on ``clock``."""
    return ChatService(server.chat.hub, server.chat.delivery, store=ChatStore(), clock=clock)


async def test_a_timeout_holds_until_its_end_and_not_after(server, make_user, make_stream):
    clock = FakeClock()
    chat = _service(server, clock)
    moderation = chat.moderation
    owner, viewer = await make_user(), await make_user()
    stream = await make_stream(owner)
    s = str(stream.id)

    ban = await moderation.ban(owner, s, str(viewer.id), 60, "cool off")
    assert ban.ban.expires_at == clock.now + timedelta(seconds=60)

    clock.now += timedelta(seconds=59, milliseconds=999)
    with pytest.raises(Forbidden):
        await chat.send_message(viewer, s, "am I back?")
    assert [b.user_id for b in await moderation.bans(owner, s)] == [str(viewer.id)]

    clock.now += timedelta(milliseconds=1)
    assert (await chat.send_message(viewer, s, "back")).sender_role is ChatRole.VIEWER
    assert await moderation.bans(owner, s) == []
    assert await moderation.unban(owner, s, str(viewer.id)) is False  # an expired ban is no ban


async def test_a_permanent_ban_never_lifts_itself(server, make_user, make_stream):
    clock = FakeClock()
    chat = _service(server, clock)
    moderation = chat.moderation
    owner, viewer = await make_user(), await make_user()
    stream = await make_stream(owner)

    await moderation.ban(owner, str(stream.id), str(viewer.id))
    clock.now += timedelta(days=365 * 10)

    with pytest.raises(Forbidden):
        await chat.send_superlike(viewer, str(stream.id))
    with pytest.raises(BadUserInput):
        await moderation.ban(owner, str(stream.id), str(viewer.id), MAX_BAN_SECONDS + 1)


# -- deleting messages ---------------------------------------------------------------------------

DELETE = """
mutation($id: ID!, $r: String) {
  deleteChatMessage(id: $id, reason: $r) { id content deletedAt cursor sender { userId } }
}
"""
SEND_ID = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id cursor } }"
PAGE = "query($s: ID!) { chatMessages(streamId: $s) { edges { node { id content deletedAt } } } }"


async def _send(client: GraphQLClient, stream_id: str, content: str) -> dict:
    return (await client.data(SEND_ID, {"s": stream_id, "c": content}))["sendChatMessage"]


async def test_a_deleted_message_is_a_tombstone_in_history_rest_and_replay(room, server, http):
    first = await _send(room.as_viewer, room.s, "hello")
    gone = await _send(room.as_viewer, room.s, "abusive text")
    await _send(room.as_other, room.s, "still here")

    deleted = (await room.as_moderator.data(DELETE, {"id": gone["id"], "r": "abuse"}))["deleteChatMessage"]
    assert (deleted["id"], deleted["content"], deleted["cursor"]) == (gone["id"], "", gone["cursor"])
    assert deleted["deletedAt"] is not None

    nodes = [e["node"] for e in (await room.as_other.data(PAGE, {"s": room.s}))["chatMessages"]["edges"]]
    assert [(n["content"], n["deletedAt"] is None) for n in nodes] == [
        ("hello", True),
        ("", False),
        ("still here", True),
    ]
    headers = {"Authorization": server.token(room.other)}
    rest = (await http.get(f"/api/v1/live-stream/{room.s}/chat/messages", headers=headers)).json()["messages"]
    assert [m["content"] for m in rest] == ["hello", "", "still here"]
    assert rest[1]["deletedAt"] is not None and "deletedAt" not in rest[0]
    assert "abusive" not in str(rest) and "abusive" not in str(nodes)

    # A replay with `after` leaves it out, and the live part follows.
    replayed = [m.content async for m in _take(server.chat.subscribe(room.s, after=first["cursor"]), 1)]
    assert replayed == ["still here"]

    actions = await ChatStore().moderation_actions(room.s)
    assert actions[-1].kind is ModerationActionKind.MESSAGE_DELETED
    assert (actions[-1].actor.id, actions[-1].target.id) == (str(room.moderator.id), str(room.viewer.id))
    assert (actions[-1].reason, actions[-1].message_id) == ("abuse", gone["id"])


async def _take(messages, count: int):
    """The first ``count`` items of an async generator, which is then closed."""
    try:
        for _ in range(count):
            yield await anext(messages)
    finally:
        await messages.aclose()


async def test_deleting_twice_is_idempotent_and_recorded_once(room):
    message = await _send(room.as_viewer, room.s, "oops")
    first = (await room.as_viewer.data(DELETE, {"id": message["id"]}))["deleteChatMessage"]
    again = (await room.as_owner.data(DELETE, {"id": message["id"], "r": "later"}))["deleteChatMessage"]
    assert again == first and first["content"] == ""
    kinds = [a.kind for a in await ChatStore().moderation_actions(room.s)]
    assert kinds.count(ModerationActionKind.MESSAGE_DELETED) == 1


async def test_who_may_delete_whose_message(room, make_user, client_for):
    second_moderator = await make_user()
    await room.as_owner.data(ADD, {"s": room.s, "u": str(second_moderator.id)})
    as_second = client_for(second_moderator)
    by_owner = await _send(room.as_owner, room.s, "owner")
    by_moderator = await _send(room.as_moderator, room.s, "moderator")
    by_viewer = await _send(room.as_viewer, room.s, "viewer")

    refused = [
        (room.as_moderator, by_owner, "only the owner can delete the owner's messages"),
        (as_second, by_moderator, "a moderator cannot delete another moderator's message"),
        (room.as_other, by_viewer, "only the stream's owner and moderators can delete others' messages"),
        (room.as_viewer, by_owner, "only the stream's owner and moderators can delete others' messages"),
    ]
    for client, message, why in refused:
        error = await client.error(DELETE, {"id": message["id"]})
        assert error["extensions"] == {"code": "FORBIDDEN", "statusCode": 403}
        assert error["message"] == f"Insufficient permissions: {why}"
    contents = [e["node"]["content"] for e in (await room.as_viewer.data(PAGE, {"s": room.s}))["chatMessages"]["edges"]]
    assert contents == ["owner", "moderator", "viewer"]

    # The owner deletes anyone's, a moderator a viewer's, and every sender their own.
    assert (await room.as_owner.data(DELETE, {"id": by_moderator["id"]}))["deleteChatMessage"]["content"] == ""
    assert (await as_second.data(DELETE, {"id": by_viewer["id"]}))["deleteChatMessage"]["content"] == ""
    assert (await room.as_owner.data(DELETE, {"id": by_owner["id"]}))["deleteChatMessage"]["content"] == ""
    own = await _send(room.as_moderator, room.s, "mine")
    assert (await room.as_moderator.data(DELETE, {"id": own["id"]}))["deleteChatMessage"]["content"] == ""


async def test_deleting_names_a_text_message_that_exists(room):
    for message_id in [UNKNOWN_ID, "not-an-id"]:
        error = await room.as_owner.error(DELETE, {"id": message_id})
        assert error["extensions"]["code"] == "NOT_FOUND"
    superlike = (await room.as_viewer.data(SUPERLIKE, {"s": room.s}))["sendSuperlike"]
    assert code(await room.as_owner.error(DELETE, {"id": superlike["id"]})) == "BAD_USER_INPUT"
    message = await _send(room.as_viewer, room.s, "x")
    assert code(await room.as_owner.error(DELETE, {"id": message["id"], "r": "x" * 501})) == "BAD_USER_INPUT"


async def test_rest_deletes_with_the_seeds_envelope(room, server, http):
    message = await _send(room.as_viewer, room.s, "rest text")
    url = f"/api/v1/live-stream/{room.s}/chat/messages/{message['id']}"

    assert (await http.delete(url)).status_code == 401
    refused = await http.delete(url, headers={"Authorization": server.token(room.other)})
    assert refused.status_code == 403
    assert refused.json()["errors"] == [
        "Insufficient permissions",
        "only the stream's owner and moderators can delete others' messages",
    ]
    for path in [
        f"/api/v1/live-stream/{room.s}/chat/messages/{UNKNOWN_ID}",
        f"/api/v1/live-stream/{UNKNOWN_ID}/chat/messages/{message['id']}",
    ]:
        missing = await http.delete(path, headers={"Authorization": server.token(room.owner)})
        assert missing.status_code == 404, missing.text
        assert missing.json()["errors"][0] == "Resource not found"

    headers = {"Authorization": server.token(room.moderator)}
    for _ in range(2):
        response = await http.delete(url, params={"reason": "spam"}, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["_id"], body["content"]) == (message["id"], "")
        assert body["deletedAt"] is not None
    history = (await http.get(f"/api/v1/live-stream/{room.s}/chat/messages", headers=headers)).json()
    assert [m["content"] for m in history["messages"]] == [""]
    action = (await ChatStore().moderation_actions(room.s))[-1]
    assert (action.kind, action.reason) == (ModerationActionKind.MESSAGE_DELETED, "spam")


async def test_a_queued_message_deleted_before_it_is_sent_is_never_sent(room, server):
    """A subscriber that has not been sent a message yet is never sent it once it is deleted,
    whether it was already queued or still to arrive."""
    messages = server.chat.subscribe(room.s)
    first = asyncio.ensure_future(anext(messages))
    await server.chat.hub.wait_for_subscribers(room.s, 1)
    await _send(room.as_viewer, room.s, "one")
    doomed = await _send(room.as_viewer, room.s, "doomed")
    await _send(room.as_viewer, room.s, "three")
    try:
        assert (await first).content == "one"  # the subscriber holds the rest, unsent
        await room.as_owner.data(DELETE, {"id": doomed["id"]})
        assert (await anext(messages)).content == "three"
    finally:
        await messages.aclose()


async def test_a_deletion_through_one_replica_holds_back_the_message_on_another(room, server, make_settings):
    """The other replica learns of the deletion from its change stream, in order: once it has
    delivered a message stored after the deletion, the deleted one is never sent there."""
    async with serve(create_app(make_settings(), database=server.services.database)) as other:
        held, watcher = other.chat.subscribe(room.s), other.chat.subscribe(room.s)
        first, watched = asyncio.ensure_future(anext(held)), asyncio.ensure_future(anext(watcher))
        await other.chat.hub.wait_for_subscribers(room.s, 2)
        await _send(room.as_viewer, room.s, "one")
        doomed = await _send(room.as_viewer, room.s, "doomed")
        try:
            assert (await first).content == "one"
            await room.as_owner.data(DELETE, {"id": doomed["id"]})
            await _send(room.as_viewer, room.s, "after")
            # The watcher reaching "after" means the other replica has handled the deletion.
            seen = [(await watched).content]
            while seen[-1] != "after":
                seen.append((await anext(watcher)).content)
            assert (await anext(held)).content == "after"
        finally:
            await held.aclose()
            await watcher.aclose()


# -- events in the stream's log ------------------------------------------------------------------

FIRST_PAGE = """
query($s: ID!, $n: Int!, $a: String) {
  chatMessages(streamId: $s, first: $n, after: $a) {
    edges { node { content } } pageInfo { hasNextPage hasPreviousPage endCursor }
  }
}
"""
END = "mutation($s: ID!) { endLiveStream(id: $s) { status } }"


async def _log(server, stream_id: str) -> list[ChatMessage]:
    return [entry async for entry in server.chat.store.replay(stream_id, after=0, every_kind=True)]


async def test_every_action_is_an_event_of_the_streams_log_in_order(room, server):
    message = await _send(room.as_viewer, room.s, "bad words")
    await room.as_moderator.data(BAN, {"s": room.s, "u": str(room.other.id), "d": 60, "r": "spam"})
    await room.as_moderator.data(UNBAN, {"s": room.s, "u": str(room.other.id)})
    await room.as_moderator.data(DELETE, {"id": message["id"], "r": "rude"})
    await room.as_owner.data(REMOVE, {"s": room.s, "u": str(room.moderator.id)})

    log = await _log(server, room.s)
    assert [entry.seq for entry in log] == list(range(1, len(log) + 1))  # one numbering, no gaps
    assert [entry.kind for entry in log] == [
        "MODERATOR_ADDED",
        "TEXT",
        "USER_BANNED",
        "USER_UNBANNED",
        "MESSAGE_DELETED",
        "MODERATOR_REMOVED",
    ]
    added, _, banned, unbanned, deleted, removed = log
    assert (added.event.actor.id, added.event.target.id, added.sender_role) == (
        str(room.owner.id),
        str(room.moderator.id),
        ChatRole.OWNER,
    )
    assert (banned.event.actor.id, banned.event.target.id, banned.event.reason) == (
        str(room.moderator.id),
        str(room.other.id),
        "spam",
    )
    assert banned.sender_role is ChatRole.MODERATOR and banned.event.expires_at is not None
    assert unbanned.event.target.id == str(room.other.id) and unbanned.event.expires_at is None
    assert (deleted.event.message_id, deleted.event.message_seq, deleted.event.reason) == (message["id"], 2, "rude")
    assert deleted.event.target.id == str(room.viewer.id)
    assert removed.event.target.id == str(room.moderator.id)
    assert all(entry.content == "" for entry in log)  # the deleted text is nowhere, events included


async def test_deleting_again_tells_the_deletion_once(room, server):
    message = await _send(room.as_viewer, room.s, "oops")
    for client in (room.as_viewer, room.as_owner, room.as_viewer):
        await client.data(DELETE, {"id": message["id"]})
    kinds = [entry.kind for entry in await _log(server, room.s)]
    assert kinds.count("MESSAGE_DELETED") == 1


async def test_history_pages_and_message_added_leave_the_events_out(room, server, http):
    subscription = server.chat.subscribe(room.s)
    waiting = asyncio.ensure_future(anext(subscription))
    await server.chat.hub.wait_for_subscribers(room.s, 1)
    await _send(room.as_viewer, room.s, "one")
    for _ in range(3):  # events between the messages
        await room.as_owner.data(BAN, {"s": room.s, "u": str(room.other.id), "d": 60})
    await _send(room.as_viewer, room.s, "two")
    await room.as_owner.data(UNBAN, {"s": room.s, "u": str(room.other.id)})
    await _send(room.as_viewer, room.s, "three")

    assert (await waiting).content == "one"
    assert [(await anext(subscription)).content for _ in range(2)] == ["two", "three"]
    await subscription.aclose()

    first = (await room.as_viewer.data(FIRST_PAGE, {"s": room.s, "n": 2}))["chatMessages"]
    assert [e["node"]["content"] for e in first["edges"]] == ["one", "two"]
    assert first["pageInfo"]["hasNextPage"] and not first["pageInfo"]["hasPreviousPage"]
    rest = await room.as_viewer.data(FIRST_PAGE, {"s": room.s, "n": 2, "a": first["pageInfo"]["endCursor"]})
    page = rest["chatMessages"]
    assert [e["node"]["content"] for e in page["edges"]] == ["three"]
    assert not page["pageInfo"]["hasNextPage"] and page["pageInfo"]["hasPreviousPage"]
    headers = {"Authorization": server.token(room.viewer)}
    listed = (await http.get(f"/api/v1/live-stream/{room.s}/chat/messages", headers=headers)).json()["messages"]
    assert [m["content"] for m in listed] == ["one", "two", "three"]


async def test_after_the_end_an_action_holds_but_appends_nothing(room, server):
    message = await _send(room.as_viewer, room.s, "late regret")
    await room.as_owner.data(END, {"s": room.s})
    before = await _log(server, room.s)
    assert before[-1].kind == "STREAM_ENDED"

    deleted = (await room.as_moderator.data(DELETE, {"id": message["id"]}))["deleteChatMessage"]
    await room.as_moderator.data(BAN, {"s": room.s, "u": str(room.other.id)})
    assert deleted["content"] == ""
    assert [b["user"]["userId"] for b in (await room.as_owner.data(BANS, {"s": room.s}))["chatBans"]] == [
        str(room.other.id)
    ]
    assert [entry.seq for entry in await _log(server, room.s)] == [entry.seq for entry in before]
