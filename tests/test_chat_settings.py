"""Chat settings over real HTTP (GraphQL and REST) on the real database: slow mode, chat off and
blocked terms, who may set them, who is held to them, their record, and replicas."""

from __future__ import annotations

import httpx
import pytest

from gql_api.app import create_app
from gql_api.documents import ModerationActionKind
from gql_api.store import ChatStore
from tests.conftest import GraphQLClient, serve
from tests.test_rest import assert_envelope

UPDATE = """
mutation($s: ID!, $slow: Int, $on: Boolean, $terms: [String!]) {
  updateChatSettings(streamId: $s, slowModeSeconds: $slow, chatEnabled: $on, blockedTerms: $terms) {
    slowModeSeconds chatEnabled blockedTerms updatedAt updatedBy { userId }
  }
}
"""
SETTINGS = "query($s: ID!) { liveStream(id: $s) { chatSettings { slowModeSeconds chatEnabled blockedTerms } } }"
ADD = "mutation($s: ID!, $u: ID!) { addModerator(streamId: $s, userId: $u) { id } }"
SEND = """
mutation($s: ID!, $c: String!, $id: String) {
  sendChatMessage(streamId: $s, content: $c, clientMessageId: $id) { id content }
}
"""
SUPERLIKE = "mutation($s: ID!) { sendSuperlike(streamId: $s) { id } }"
HISTORY = "query($s: ID!) { chatMessages(streamId: $s) { edges { node { content } } } }"
UNKNOWN_ID = "64d15f9e2e6c8f4d5a123000"


@pytest.fixture
async def room(make_user, make_stream, client_for):
    """A stream with its owner, a moderator and a viewer, and a client for each."""
    owner, moderator, viewer = [await make_user() for _ in range(3)]
    stream = await make_stream(owner)
    await client_for(owner).data(ADD, {"s": str(stream.id), "u": str(moderator.id)})

    class Room:
        pass

    room = Room()
    room.s, room.owner, room.moderator, room.viewer = str(stream.id), owner, moderator, viewer
    room.as_owner, room.as_moderator, room.as_viewer = client_for(owner), client_for(moderator), client_for(viewer)
    return room


def code(error: dict) -> str:
    return error["extensions"]["code"]


async def update(client: GraphQLClient, stream_id: str, **arguments) -> dict:
    return (await client.data(UPDATE, {"s": stream_id, **arguments}))["updateChatSettings"]


async def contents(client: GraphQLClient, stream_id: str) -> list[str]:
    return [e["node"]["content"] for e in (await client.data(HISTORY, {"s": stream_id}))["chatMessages"]["edges"]]


# -- setting them ---------------------------------------------------------------------------------


async def test_the_defaults_are_no_rule_at_all(room):
    shown = (await room.as_owner.data(SETTINGS, {"s": room.s}))["liveStream"]["chatSettings"]
    assert shown == {"slowModeSeconds": 0, "chatEnabled": True, "blockedTerms": []}


async def test_the_owner_and_moderators_change_them_and_omitted_ones_keep_their_value(room):
    first = await update(room.as_owner, room.s, slow=10, terms=["spoiler"])
    second = await update(room.as_moderator, room.s, on=False)

    assert first["slowModeSeconds"] == 10 and first["chatEnabled"] is True and first["blockedTerms"] == ["spoiler"]
    assert first["updatedBy"] == {"userId": str(room.owner.id)} and first["updatedAt"]
    assert {k: second[k] for k in ("slowModeSeconds", "chatEnabled", "blockedTerms")} == {
        "slowModeSeconds": 10,
        "chatEnabled": False,
        "blockedTerms": ["spoiler"],
    }
    assert second["updatedBy"] == {"userId": str(room.moderator.id)}
    assert (await update(room.as_owner, room.s, terms=[]))["blockedTerms"] == []


async def test_viewers_cannot_change_them_nor_read_the_blocked_terms(room):
    await update(room.as_owner, room.s, terms=["spoiler"])

    error = await room.as_viewer.error(UPDATE, {"s": room.s, "on": False})
    shown = (await room.as_viewer.data(SETTINGS, {"s": room.s}))["liveStream"]["chatSettings"]

    assert error["extensions"] == {"code": "FORBIDDEN", "statusCode": 403}
    assert shown == {"slowModeSeconds": 0, "chatEnabled": True, "blockedTerms": None}
    moderators_view = (await room.as_moderator.data(SETTINGS, {"s": room.s}))["liveStream"]["chatSettings"]
    assert moderators_view["blockedTerms"] == ["spoiler"]


async def test_changing_the_settings_of_a_stream_that_does_not_exist_is_not_found(room):
    assert code(await room.as_owner.error(UPDATE, {"s": UNKNOWN_ID, "on": False})) == "NOT_FOUND"


@pytest.mark.parametrize(
    "arguments",
    [
        {"slow": 1},
        {"slow": 2},
        {"slow": 121},
        {"slow": -1},
        {"terms": [""]},
        {"terms": ["   "]},
        {"terms": ["\u200b"]},
        {"terms": ["x" * 101]},
        {"terms": ["a\u0000b"]},
        {"terms": [f"t{n}" for n in range(501)]},
    ],
)
async def test_invalid_settings_are_bad_user_input_and_change_nothing(room, arguments):
    error = await room.as_owner.error(UPDATE, {"s": room.s, **arguments})

    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}
    field = "slowModeSeconds" if "slow" in arguments else "blockedTerms"
    assert error["message"].startswith(f"Validation failed: `{field}`")
    shown = (await room.as_owner.data(SETTINGS, {"s": room.s}))["liveStream"]["chatSettings"]
    assert shown == {"slowModeSeconds": 0, "chatEnabled": True, "blockedTerms": []}


@pytest.mark.parametrize("seconds", [0, 3, 120])
async def test_slow_mode_is_off_or_3_to_120_seconds(room, seconds):
    assert (await update(room.as_owner, room.s, slow=seconds))["slowModeSeconds"] == seconds


async def test_terms_are_trimmed_and_kept_once_by_their_normalised_form(room):
    terms = [" Bad ", "\uff22\uff21\uff24", "bad", "x" * 100, "Straße", "STRASSE"] + [f"t{n}" for n in range(496)]
    stored = (await update(room.as_owner, room.s, terms=terms))["blockedTerms"]
    assert stored[:3] == ["Bad", "x" * 100, "Straße"] and len(stored) == 499


async def test_every_change_is_recorded_and_a_repeat_is_not(room):
    await update(room.as_owner, room.s, slow=5)
    await update(room.as_moderator, room.s, slow=5)  # nothing changes
    await update(room.as_moderator, room.s, on=False, terms=["x"])

    actions = [
        a for a in await ChatStore().moderation_actions(room.s) if a.kind is ModerationActionKind.CHAT_SETTINGS_CHANGED
    ]
    assert [(a.actor.id, a.target) for a in actions] == [(str(room.owner.id), None), (str(room.moderator.id), None)]
    assert actions[1].chat_settings is not None
    assert (actions[1].chat_settings.slow_mode_seconds, actions[1].chat_settings.chat_enabled) == (5, False)
    assert actions[1].chat_settings.blocked_terms == ["x"]


# -- chat off -------------------------------------------------------------------------------------


async def test_with_the_chat_off_only_the_owner_and_moderators_send(room, server, http):
    await update(room.as_owner, room.s, on=False)

    refused = await room.as_viewer.error(SEND, {"s": room.s, "c": "hello?"})
    refused_superlike = await room.as_viewer.error(SUPERLIKE, {"s": room.s})
    headers = {"Authorization": server.token(room.viewer)}
    rest = await http.post(f"/api/v1/live-stream/{room.s}/chat/messages", json={"content": "hi"}, headers=headers)
    rest_superlike = await http.post(f"/api/v1/live-stream/{room.s}/chat/superlike", headers=headers)
    await room.as_owner.data(SEND, {"s": room.s, "c": "owner"})
    await room.as_moderator.data(SEND, {"s": room.s, "c": "moderator"})
    await room.as_moderator.data(SUPERLIKE, {"s": room.s})

    assert refused["extensions"] == {"code": "FORBIDDEN", "statusCode": 403}
    assert "the chat of this stream is off" in refused["message"]
    assert code(refused_superlike) == "FORBIDDEN"
    assert assert_envelope(rest, 403, "Insufficient permissions")[1].startswith("the chat of this stream is off")
    assert_envelope(rest_superlike, 403, "Insufficient permissions")
    assert await contents(room.as_viewer, room.s) == ["owner", "moderator", ""]

    await update(room.as_moderator, room.s, on=True)
    await room.as_viewer.data(SEND, {"s": room.s, "c": "back"})


# -- blocked terms --------------------------------------------------------------------------------


async def test_a_viewers_message_with_a_blocked_term_is_refused_and_not_stored(room, server, http):
    await update(room.as_owner, room.s, terms=["bad", "spoiler alert"])
    await room.as_viewer.data(SEND, {"s": room.s, "c": "fine"})

    refused = await room.as_viewer.error(SEND, {"s": room.s, "c": "so \uff22\uff21\uff24"})
    rest = await http.post(
        f"/api/v1/live-stream/{room.s}/chat/messages",
        json={"content": "SPOILER ALERT: he dies"},
        headers={"Authorization": server.token(room.viewer)},
    )

    assert refused["extensions"] == {"code": "CONTENT_BLOCKED", "statusCode": 422}
    assert "bad" not in refused["message"].lower()  # the list is not told
    errors = assert_envelope(rest, 422, "Content blocked")
    assert "spoiler" not in " ".join(errors).lower()
    assert await contents(room.as_viewer, room.s) == ["fine"]
    await room.as_viewer.data(SUPERLIKE, {"s": room.s})  # superlikes have no text to block


async def test_the_owner_and_moderators_are_not_held_to_blocked_terms(room):
    await update(room.as_owner, room.s, terms=["bad"])
    await room.as_owner.data(SEND, {"s": room.s, "c": "bad owner"})
    await room.as_moderator.data(SEND, {"s": room.s, "c": "bad mod"})
    assert await contents(room.as_viewer, room.s) == ["bad owner", "bad mod"]


# -- slow mode ------------------------------------------------------------------------------------


async def test_in_slow_mode_a_viewers_message_too_soon_is_rate_limited(room, server, http):
    await update(room.as_owner, room.s, slow=120)
    await room.as_viewer.data(SEND, {"s": room.s, "c": "first", "id": "c-1"})

    refused = await room.as_viewer.error(SEND, {"s": room.s, "c": "second"})
    again = await room.as_viewer.data(SEND, {"s": room.s, "c": "first", "id": "c-1"})  # a retry: the original
    rest = await http.post(
        f"/api/v1/live-stream/{room.s}/chat/messages",
        json={"content": "third"},
        headers={"Authorization": server.token(room.viewer)},
    )

    assert refused["extensions"]["code"] == "RATE_LIMITED" and refused["extensions"]["statusCode"] == 429
    assert 1 <= refused["extensions"]["retryAfter"] <= 120
    assert "slow mode is on, one message every 120 seconds" in refused["message"]
    assert again["sendChatMessage"]["content"] == "first"
    assert_envelope(rest, 429, "Rate limit exceeded: too many messages, slow down")
    assert 1 <= int(rest.headers["retry-after"]) <= 120
    assert await contents(room.as_viewer, room.s) == ["first"]

    await update(room.as_owner, room.s, slow=0)
    await room.as_viewer.data(SEND, {"s": room.s, "c": "slow mode off"})


async def test_the_owner_and_moderators_are_not_slowed(room):
    await update(room.as_owner, room.s, slow=120)
    for n in range(3):
        await room.as_owner.data(SEND, {"s": room.s, "c": f"o{n}"})
        await room.as_moderator.data(SEND, {"s": room.s, "c": f"m{n}"})
    assert len(await contents(room.as_viewer, room.s)) == 6


# -- replicas -------------------------------------------------------------------------------------


async def test_a_change_through_one_replica_holds_on_another_from_its_next_send(room, server, make_settings):
    async with (
        serve(create_app(make_settings(), database=server.services.database)) as other,
        httpx.AsyncClient(base_url=other.url, timeout=10) as http,
    ):
        viewer_there = GraphQLClient(http, other.token(room.viewer))
        await viewer_there.data(SEND, {"s": room.s, "c": "hi"})  # the other replica knows the stream now

        await update(room.as_owner, room.s, on=False)
        assert code(await viewer_there.error(SEND, {"s": room.s, "c": "x"})) == "FORBIDDEN"
        await update(room.as_owner, room.s, on=True, terms=["bad"])
        assert code(await viewer_there.error(SEND, {"s": room.s, "c": "BAD"})) == "CONTENT_BLOCKED"
        await update(room.as_moderator, room.s, terms=[])
        await viewer_there.data(SEND, {"s": room.s, "c": "bad is fine again"})

    assert await contents(room.as_owner, room.s) == ["hi", "bad is fine again"]


async def test_a_change_is_an_event_of_the_streams_log_and_a_no_change_is_not(room, server):
    await update(room.as_moderator, room.s, slow=5, terms=["spoiler"])
    await update(room.as_moderator, room.s, slow=5)  # nothing changes
    log = [entry async for entry in server.chat.store.replay(room.s, after=0, every_kind=True)]
    assert [entry.kind for entry in log] == ["MODERATOR_ADDED", "CHAT_SETTINGS_CHANGED"]
    changed = log[-1]
    assert (changed.event.actor.id, changed.sender_role) == (str(room.moderator.id), "MODERATOR")
    settings = changed.event.settings
    assert (settings.slow_mode_seconds, settings.chat_enabled, settings.blocked_terms) == (5, True, ["spoiler"])
