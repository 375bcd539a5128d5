"""The chatMessages connection and the other queries, over real HTTP."""

from __future__ import annotations

import pytest

from gql_api.documents import User
from gql_api.pagination import encode_cursor

PAGE = """
query Page($s: ID!, $first: Int, $after: String, $last: Int, $before: String) {
  chatMessages(streamId: $s, first: $first, after: $after, last: $last, before: $before) {
    edges { cursor node { content cursor } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""


async def _stream_with_messages(server, make_user, make_stream, count: int) -> str:
    user = await make_user()
    stream = await make_stream(owner=user)  # the owner is exempt from the rate limit
    for n in range(count):
        await server.chat.send_message(user, str(stream.id), f"m{n}")
    return str(stream.id)


def _contents(connection) -> list[str]:
    return [edge["node"]["content"] for edge in connection["edges"]]


async def test_no_arguments_gives_the_newest_50_oldest_first(server, make_user, make_stream, client_for):
    stream_id = await _stream_with_messages(server, make_user, make_stream, 60)
    page = (await client_for(await make_user()).data(PAGE, {"s": stream_id}))["chatMessages"]

    assert _contents(page) == [f"m{n}" for n in range(10, 60)]
    assert page["pageInfo"]["hasPreviousPage"] is True
    assert page["pageInfo"]["hasNextPage"] is False
    assert page["pageInfo"]["startCursor"] == page["edges"][0]["cursor"] == page["edges"][0]["node"]["cursor"]
    assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]


async def test_paging_back_from_the_newest_returns_every_message_once(server, make_user, make_stream, client_for):
    stream_id = await _stream_with_messages(server, make_user, make_stream, 23)
    client = client_for(await make_user())
    seen: list[str] = []
    before = None
    while True:
        page = (await client.data(PAGE, {"s": stream_id, "last": 5, "before": before}))["chatMessages"]
        seen = _contents(page) + seen
        if not page["pageInfo"]["hasPreviousPage"]:
            break
        assert page["pageInfo"]["hasNextPage"] is (before is not None)
        before = page["pageInfo"]["startCursor"]

    assert seen == [f"m{n}" for n in range(23)]


async def test_paging_forward_from_the_oldest_returns_every_message_once(server, make_user, make_stream, client_for):
    stream_id = await _stream_with_messages(server, make_user, make_stream, 12)
    client = client_for(await make_user())
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = (await client.data(PAGE, {"s": stream_id, "first": 5, "after": after}))["chatMessages"]
        pages += 1
        seen += _contents(page)
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]

    assert seen == [f"m{n}" for n in range(12)]
    assert pages == 3


async def test_after_alone_reads_forward(server, make_user, make_stream, client_for):
    stream_id = await _stream_with_messages(server, make_user, make_stream, 4)
    client = client_for(await make_user())
    first = (await client.data(PAGE, {"s": stream_id, "first": 1}))["chatMessages"]

    rest = (await client.data(PAGE, {"s": stream_id, "after": first["pageInfo"]["endCursor"]}))["chatMessages"]

    assert _contents(rest) == ["m1", "m2", "m3"]


async def test_an_empty_stream_has_an_empty_page(make_user, make_stream, client_for):
    stream = await make_stream()
    page = (await client_for(await make_user()).data(PAGE, {"s": str(stream.id)}))["chatMessages"]
    assert page == {
        "edges": [],
        "pageInfo": {"hasNextPage": False, "hasPreviousPage": False, "startCursor": None, "endCursor": None},
    }


@pytest.mark.parametrize(
    "arguments",
    [
        {"first": 0},
        {"first": 101},
        {"last": 0},
        {"last": -1},
        {"last": 101},
        {"first": 1, "last": 1},
        {"after": "not a cursor"},
        {"before": "bm9wZQ"},
        {"before": encode_cursor(3)[:-1] + "!"},
    ],
)
async def test_bad_page_arguments_are_bad_user_input(make_user, make_stream, client_for, arguments):
    stream = await make_stream()
    error = await client_for(await make_user()).error(PAGE, {"s": str(stream.id), **arguments})
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


async def test_history_of_an_unknown_stream_is_not_found(make_user, client_for):
    error = await client_for(await make_user()).error(PAGE, {"s": "64d15f9e2e6c8f4d5a123000"})
    assert error["extensions"] == {"code": "NOT_FOUND", "statusCode": 404}


async def test_me_is_the_caller(make_user, client_for):
    user = await make_user(name="Ada", surname="Lovelace", photo_url="https://img.example/ada.webp")
    me = (
        await client_for(user).data("{ me { id username name surname availabilityStatus profilePhoto { url type } } }")
    )["me"]
    assert me == {
        "id": str(user.id),
        "username": user.username,
        "name": "Ada",
        "surname": "Lovelace",
        "availabilityStatus": "available",
        "profilePhoto": {"url": "https://img.example/ada.webp", "type": "image"},
    }


async def test_senders_are_snapshots_without_an_identity_of_their_own(server, make_user, make_stream, client_for):
    # Normalised caches (Apollo, urql Graphcache, Relay) merge objects by __typename and id:
    # each message's sender must stay its own snapshot, apart from the live User.
    user = await make_user(name="Ada")
    stream = await make_stream()
    await server.chat.send_message(user, str(stream.id), "before")
    await user.set({User.name: "Augusta"})
    await server.chat.send_message(user, str(stream.id), "after")
    query = (
        "query($s: ID!) { me { __typename id name }"
        " chatMessages(streamId: $s) { edges { node { content sender { __typename userId name } } } } }"
    )
    data = await client_for(user).data(query, {"s": str(stream.id)})

    assert data["me"] == {"__typename": "User", "id": str(user.id), "name": "Augusta"}
    assert [e["node"] for e in data["chatMessages"]["edges"]] == [
        {"content": "before", "sender": {"__typename": "UserSnapshot", "userId": str(user.id), "name": "Ada"}},
        {"content": "after", "sender": {"__typename": "UserSnapshot", "userId": str(user.id), "name": "Augusta"}},
    ]


async def test_a_stream_owner_is_a_snapshot_apart_from_the_live_user(make_user, make_stream, client_for):
    # Typed User with the live id, the owner would share `User:<id>` with `me` in a normalised
    # cache, and the snapshot's old name would overwrite the caller's current one.
    user = await make_user(name="Ada")
    stream = await make_stream(user)
    await user.set({User.name: "Augusta"})
    query = "query($s: ID!) { me { __typename id name } liveStream(id: $s) { owner { __typename userId id name } } }"

    data = await client_for(user).data(query, {"s": str(stream.id)})

    assert data["me"] == {"__typename": "User", "id": str(user.id), "name": "Augusta"}
    # `id`: deprecated, still served, so documents selecting `owner { id }` keep working.
    assert data["liveStream"]["owner"] == {
        "__typename": "UserSnapshot",
        "userId": str(user.id),
        "id": str(user.id),
        "name": "Ada",
    }


async def test_a_user_without_a_photo_has_a_null_profile_photo(make_user, client_for):
    user = await make_user(photo_url=None)
    assert (await client_for(user).data("{ me { profilePhoto { url } } }"))["me"]["profilePhoto"] is None


async def test_malformed_queries_are_bad_user_input(make_user, client_for):
    client = client_for(await make_user())
    for query in ["{ me { nope } }", "{ me ", "query($x: Int!) { me { id } }"]:
        error = await client.error(query)
        assert error["extensions"]["code"] == "BAD_USER_INPUT", (query, error)
        assert error["extensions"]["statusCode"] == 400
