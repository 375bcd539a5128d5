"""Mutations over real HTTP: messages, superlikes and streams, with every client error."""

from __future__ import annotations

import asyncio
import json

import pytest

from gql_api.compat import eq
from gql_api.documents import ChatMessage, MessageKind

SEND = """
mutation Send($streamId: ID!, $content: String!, $clientMessageId: String) {
  sendChatMessage(streamId: $streamId, content: $content, clientMessageId: $clientMessageId) {
    id streamId kind content clientMessageId cursor createdAt updatedAt
    sender { __typename userId id username name surname availabilityStatus
             profilePhoto { id url type createdAt updatedAt variants { size url } } }
  }
}
"""
SUPERLIKE = "mutation($s: ID!) { sendSuperlike(streamId: $s) { id kind content sender { username } } }"
STREAM = "query($id: ID!) { liveStream(id: $id) { id title status superlikeCount endedAt owner { username } } }"
HISTORY = "query($s: ID!) { chatMessages(streamId: $s, last: 100) { edges { node { id kind content } } } }"
CREATE = (
    "mutation($t: String!) { createLiveStream(title: $t) {"
    " id title status superlikeCount createdAt endedAt owner { __typename userId id username } } }"
)
END = "mutation($id: ID!) { endLiveStream(id: $id) { id status endedAt } }"
MISSING_STREAM = "64d15f9e2e6c8f4d5a123000"


async def test_send_message_returns_the_stored_message(make_user, make_stream, client_for):
    user = await make_user(name="John", surname="Doe")
    stream = await make_stream()
    client = client_for(user)

    sent = (await client.data(SEND, {"streamId": str(stream.id), "content": "  Herkese selam!  "}))["sendChatMessage"]

    assert sent["content"] == "Herkese selam!"
    assert sent["kind"] == "TEXT"
    assert sent["streamId"] == str(stream.id)
    assert sent["clientMessageId"] is None
    assert sent["sender"]["__typename"] == "UserSnapshot"
    assert sent["sender"]["userId"] == sent["sender"]["id"] == str(user.id)  # id: deprecated, still served
    assert sent["sender"]["username"] == user.username
    assert (sent["sender"]["name"], sent["sender"]["surname"]) == ("John", "Doe")
    assert {v["size"] for v in sent["sender"]["profilePhoto"]["variants"]} == {"40", "76"}
    assert sent["createdAt"].endswith("Z") and sent["createdAt"] == sent["updatedAt"]
    history = (await client.data(HISTORY, {"s": str(stream.id)}))["chatMessages"]["edges"]
    assert [e["node"] for e in history] == [{"id": sent["id"], "kind": "TEXT", "content": "Herkese selam!"}]


@pytest.mark.parametrize("content", ["", "   ", "x" * 501, " " + "y" * 501])
async def test_content_outside_1_to_500_characters_is_bad_user_input(make_user, make_stream, client_for, content):
    stream = await make_stream()
    client = client_for(await make_user())

    error = await client.error(SEND, {"streamId": str(stream.id), "content": content})

    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}
    assert (await client.data(HISTORY, {"s": str(stream.id)}))["chatMessages"]["edges"] == []


async def test_content_of_exactly_500_characters_after_trimming_is_accepted(make_user, make_stream, client_for):
    stream = await make_stream()
    sent = await client_for(await make_user()).data(
        SEND, {"streamId": str(stream.id), "content": " " + "z" * 500 + " "}
    )
    assert len(sent["sendChatMessage"]["content"]) == 500


@pytest.mark.parametrize("stream_id", [MISSING_STREAM, "not-an-object-id"])
async def test_sending_to_an_unknown_stream_is_not_found(make_user, client_for, stream_id):
    error = await client_for(await make_user()).error(SEND, {"streamId": stream_id, "content": "hi"})
    assert error["extensions"] == {"code": "NOT_FOUND", "statusCode": 404}


async def test_sending_to_an_ended_stream_is_a_conflict(make_user, make_stream, client_for):
    owner = await make_user()
    stream = await make_stream(owner)
    await client_for(owner).data(END, {"id": str(stream.id)})

    error = await client_for(await make_user()).error(SEND, {"streamId": str(stream.id), "content": "hi"})

    assert error["extensions"] == {"code": "CONFLICT", "statusCode": 409}


async def test_retry_with_the_same_client_message_id_returns_the_original(make_user, make_stream, client_for):
    stream = await make_stream()
    client = client_for(await make_user())
    variables = {"streamId": str(stream.id), "content": "once", "clientMessageId": "c-1"}

    first = (await client.data(SEND, variables))["sendChatMessage"]
    again = (await client.data(SEND, variables))["sendChatMessage"]

    assert again == first
    assert first["clientMessageId"] == "c-1"
    assert len((await client.data(HISTORY, {"s": str(stream.id)}))["chatMessages"]["edges"]) == 1


async def test_concurrent_retries_create_one_message(make_user, make_stream, client_for):
    stream = await make_stream()
    client = client_for(await make_user())
    variables = {"streamId": str(stream.id), "content": "racy", "clientMessageId": "c-race"}

    results = await asyncio.gather(*(client.data(SEND, variables) for _ in range(5)))

    assert len({r["sendChatMessage"]["id"] for r in results}) == 1
    assert len((await client.data(HISTORY, {"s": str(stream.id)}))["chatMessages"]["edges"]) == 1


async def test_client_message_id_reused_with_other_content_is_a_conflict(make_user, make_stream, client_for):
    stream = await make_stream()
    client = client_for(await make_user())
    await client.data(SEND, {"streamId": str(stream.id), "content": "one", "clientMessageId": "c-2"})

    error = await client.error(SEND, {"streamId": str(stream.id), "content": "two", "clientMessageId": "c-2"})

    assert error["extensions"] == {"code": "CONFLICT", "statusCode": 409}
    edges = (await client.data(HISTORY, {"s": str(stream.id)}))["chatMessages"]["edges"]
    assert [e["node"]["content"] for e in edges] == ["one"]


async def test_the_same_client_message_id_from_another_user_is_another_message(make_user, make_stream, client_for):
    stream = await make_stream()
    variables = {"streamId": str(stream.id), "content": "hello", "clientMessageId": "shared"}

    a = (await client_for(await make_user()).data(SEND, variables))["sendChatMessage"]
    b = (await client_for(await make_user()).data(SEND, variables))["sendChatMessage"]

    assert a["id"] != b["id"]


@pytest.mark.parametrize("client_message_id", ["", "x" * 65])
async def test_client_message_id_must_be_1_to_64_characters(make_user, make_stream, client_for, client_message_id):
    stream = await make_stream()
    error = await client_for(await make_user()).error(
        SEND, {"streamId": str(stream.id), "content": "hi", "clientMessageId": client_message_id}
    )
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


async def test_superlike_is_a_message_and_counts_once_per_user(make_user, make_stream, client_for):
    stream = await make_stream()
    fan = client_for(await make_user())

    like = (await fan.data(SUPERLIKE, {"s": str(stream.id)}))["sendSuperlike"]
    second = await fan.error(SUPERLIKE, {"s": str(stream.id)})
    await client_for(await make_user()).data(SUPERLIKE, {"s": str(stream.id)})

    assert like["kind"] == "SUPERLIKE" and like["content"] == ""
    assert second["extensions"] == {"code": "CONFLICT", "statusCode": 409}
    assert (await fan.data(STREAM, {"id": str(stream.id)}))["liveStream"]["superlikeCount"] == 2
    kinds = [e["node"]["kind"] for e in (await fan.data(HISTORY, {"s": str(stream.id)}))["chatMessages"]["edges"]]
    assert kinds == ["SUPERLIKE", "SUPERLIKE"]


async def test_superlike_errors(make_user, make_stream, client_for):
    owner = await make_user()
    stream = await make_stream(owner)
    await client_for(owner).data(END, {"id": str(stream.id)})
    client = client_for(await make_user())

    assert (await client.error(SUPERLIKE, {"s": MISSING_STREAM}))["extensions"]["code"] == "NOT_FOUND"
    assert (await client.error(SUPERLIKE, {"s": str(stream.id)}))["extensions"]["code"] == "CONFLICT"
    assert (await client.data(STREAM, {"id": str(stream.id)}))["liveStream"]["superlikeCount"] == 0


async def test_create_and_end_a_stream(make_user, client_for):
    owner = await make_user()
    client = client_for(owner)

    created = (await client.data(CREATE, {"t": "  Friday night  "}))["createLiveStream"]
    ended = (await client.data(END, {"id": created["id"]}))["endLiveStream"]

    assert created["title"] == "Friday night"
    assert created["status"] == "LIVE" and created["endedAt"] is None and created["superlikeCount"] == 0
    assert created["owner"] == {
        "__typename": "UserSnapshot",
        "userId": str(owner.id),
        "id": str(owner.id),
        "username": owner.username,
    }
    assert ended["status"] == "ENDED" and ended["endedAt"].endswith("Z")
    assert (await client.data(STREAM, {"id": created["id"]}))["liveStream"]["status"] == "ENDED"


async def test_only_the_owner_may_end_a_stream_and_only_once(make_user, make_stream, client_for):
    owner = await make_user()
    stream = await make_stream(owner)

    forbidden = await client_for(await make_user()).error(END, {"id": str(stream.id)})
    await client_for(owner).data(END, {"id": str(stream.id)})
    again = await client_for(owner).error(END, {"id": str(stream.id)})
    missing = await client_for(owner).error(END, {"id": MISSING_STREAM})

    assert forbidden["extensions"] == {"code": "FORBIDDEN", "statusCode": 403}
    assert again["extensions"] == {"code": "CONFLICT", "statusCode": 409}
    assert missing["extensions"] == {"code": "NOT_FOUND", "statusCode": 404}


@pytest.mark.parametrize("title", ["", "  ", "t" * 201])
async def test_stream_title_must_be_1_to_200_characters(make_user, client_for, title):
    error = await client_for(await make_user()).error(CREATE, {"t": title})
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


async def test_live_stream_query_returns_null_for_an_unknown_id(make_user, client_for):
    assert (await client_for(await make_user()).data(STREAM, {"id": MISSING_STREAM}))["liveStream"] is None


async def test_superlike_count_is_the_stored_superlikes_even_if_a_write_stopped_halfway(
    make_user, make_stream, client_for
):
    """The count used to be a second write after the message: a stall between the two left it
    short for good. Here the message is stored as such a stalled send would leave it."""
    fan = await make_user()
    stream = await make_stream()
    stored = ChatMessage(
        stream_id=str(stream.id),
        seq=1,
        kind=MessageKind.SUPERLIKE,
        content="",
        sender=fan.public_profile(),
        dedup_key=f"s:{fan.id}",
    )
    await stored.insert()
    client = client_for(fan)

    count = (await client.data(STREAM, {"id": str(stream.id)}))["liveStream"]["superlikeCount"]
    retry = await client.error(SUPERLIKE, {"s": str(stream.id)})

    assert count == 1
    assert retry["extensions"] == {"code": "CONFLICT", "statusCode": 409}
    assert "stored already" in retry["message"]


async def _raw(client, query: str, variables: dict) -> dict:
    """POST as ASCII JSON, so a lone surrogate travels as its escape (httpx refuses to encode it)."""
    body = json.dumps({"query": query, "variables": variables}).encode()
    headers = {"Content-Type": "application/json", "Authorization": client.token}
    response = await client.http.post("/graphql", content=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (SEND, {"content": "broken \ud83d"}),
        (SEND, {"content": "fine", "clientMessageId": "c-\udc00"}),
        (CREATE, {"t": "broken \ud83d"}),
    ],
)
async def test_a_lone_surrogate_is_bad_user_input(make_user, make_stream, client_for, query, variables):
    stream = await make_stream()
    client = client_for(await make_user())

    body = await _raw(client, query, {"streamId": str(stream.id), **variables})

    [error] = body["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}
    assert "lone surrogate" in error["message"]
    assert (await client.data(HISTORY, {"s": str(stream.id)}))["chatMessages"]["edges"] == []


@pytest.mark.parametrize(
    "content", ["\u200b", "\ufeff", " \u200b\u2060 \ufeff ", "\u0000", "a\u0000b", "a\rb", "\x1b[31m", "\x7f"]
)
async def test_invisible_only_content_and_control_characters_are_bad_user_input(
    make_user, make_stream, client_for, content
):
    stream = await make_stream()
    client = client_for(await make_user())

    error = await client.error(SEND, {"streamId": str(stream.id), "content": content})
    title_error = await client.error(CREATE, {"t": content})

    assert error["extensions"] == title_error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}
    assert (await client.data(HISTORY, {"s": str(stream.id)}))["chatMessages"]["edges"] == []


async def test_newlines_tabs_and_visible_text_around_format_characters_are_kept(make_user, make_stream, client_for):
    stream = await make_stream()
    content = "line one\n\tline two \u200b👨\u200d👩\u200d👧"
    sent = await client_for(await make_user()).data(SEND, {"streamId": str(stream.id), "content": content})
    assert sent["sendChatMessage"]["content"] == content


async def test_an_upper_case_stream_id_is_the_same_stream_everywhere(make_user, make_stream, client_for):
    """It used to find the stream but key messages by the raw string: empty history, and a
    retry through the other spelling was a CONFLICT."""
    owner = await make_user()
    stream = await make_stream(owner)
    upper = str(stream.id).upper()
    client = client_for(await make_user())
    variables = {"content": "hi", "clientMessageId": "c-case"}

    sent = (await client.data(SEND, {"streamId": upper, **variables}))["sendChatMessage"]
    retry = (await client.data(SEND, {"streamId": str(stream.id), **variables}))["sendChatMessage"]
    await client.data(SUPERLIKE, {"s": upper})
    history = (await client.data(HISTORY, {"s": upper}))["chatMessages"]["edges"]
    count = (await client.data(STREAM, {"id": upper}))["liveStream"]["superlikeCount"]
    ended = (await client_for(owner).data(END, {"id": upper}))["endLiveStream"]

    assert sent["streamId"] == str(stream.id) and retry == sent
    assert history[0]["node"]["id"] == sent["id"] and len(history) == 2
    assert count == 1
    assert ended["id"] == str(stream.id) and ended["status"] == "ENDED"


async def test_an_ended_streams_history_shows_its_messages_only(make_user, make_stream, client_for):
    owner = await make_user()
    stream = await make_stream(owner)
    client = client_for(owner)
    sent = (await client.data(SEND, {"streamId": str(stream.id), "content": "bye"}))["sendChatMessage"]
    await client.data(END, {"id": str(stream.id)})
    page = (
        "query($s: ID!, $a: String) { chatMessages(streamId: $s, first: 10, after: $a) {"
        " edges { node { id } } pageInfo { hasNextPage } } }"
    )

    forward = (await client.data(page, {"s": str(stream.id), "a": None}))["chatMessages"]
    after_last = (await client.data(page, {"s": str(stream.id), "a": sent["cursor"]}))["chatMessages"]
    backward = (await client.data(HISTORY, {"s": str(stream.id)}))["chatMessages"]["edges"]

    assert [e["node"]["id"] for e in forward["edges"]] == [sent["id"]]
    assert forward["pageInfo"]["hasNextPage"] is False
    assert after_last["edges"] == [] and after_last["pageInfo"]["hasNextPage"] is False
    assert [e["node"]["id"] for e in backward] == [sent["id"]]


async def test_ends_racing_each_other_store_one_end_and_one_succeeds(make_user, make_stream, client_for, server):
    owner = await make_user()
    stream = await make_stream(owner)
    client = client_for(owner)

    results = await asyncio.gather(*(client.execute(END, {"id": str(stream.id)}) for _ in range(5)))

    assert sum("errors" not in r for r in results) == 1  # exactly one end succeeds, as the README says
    assert {r["errors"][0]["extensions"]["code"] for r in results if "errors" in r} <= {"CONFLICT"}
    ends = await ChatMessage.find({"stream_id": eq(str(stream.id)), "kind": eq("STREAM_ENDED")}).to_list()
    assert len(ends) == 1
