"""The per-user rate limit: 20 messages per 30 seconds per user per stream, counted from the
stream's log, so every replica holds to it; and slow mode, counted the same way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from gql_api.app import create_app
from gql_api.errors import RateLimited
from gql_api.ratelimit import MessageRateLimiter, SendLog, Sent
from gql_api.roster import REFRESH_SECONDS
from gql_api.service import ChatService
from gql_api.store import ChatStore
from tests.conftest import TEST_SECRET, GraphQLClient, LiveServer, api_process, serve

SEND = """
mutation($s: ID!, $c: String!, $id: String) {
  sendChatMessage(streamId: $s, content: $c, clientMessageId: $id) { id content }
}
"""
HISTORY = "query($s: ID!) { chatMessages(streamId: $s, last: 100) { edges { node { content } } } }"


async def _send_ok(client: GraphQLClient, stream_id: str, count: int, prefix: str = "m") -> None:
    for n in range(count):
        await client.data(SEND, {"s": stream_id, "c": f"{prefix}{n}"})


def _assert_rate_limited(error: dict) -> int:
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["statusCode"] == 429
    retry_after = error["extensions"]["retryAfter"]
    assert isinstance(retry_after, int) and 1 <= retry_after <= 30
    assert "at most 20 messages per 30 seconds" in error["message"]
    return retry_after


async def test_the_21st_message_in_the_window_is_refused_and_others_keep_sending(make_user, make_stream, client_for):
    spammer, other = await make_user(), await make_user()
    stream, elsewhere = await make_stream(), await make_stream()
    client = client_for(spammer)
    await _send_ok(client, str(stream.id), 20)

    error = await client.error(SEND, {"s": str(stream.id), "c": "one too many"})

    _assert_rate_limited(error)
    await client_for(other).data(SEND, {"s": str(stream.id), "c": "someone else"})
    await client.data(SEND, {"s": str(elsewhere.id), "c": "another stream"})  # per stream
    history = await client_for(other).data(HISTORY, {"s": str(stream.id)})
    contents = [edge["node"]["content"] for edge in history["chatMessages"]["edges"]]
    assert contents == [f"m{n}" for n in range(20)] + ["someone else"]


async def test_the_streams_owner_is_exempt(make_user, make_stream, client_for):
    owner = await make_user()
    stream = await make_stream(owner=owner)
    await _send_ok(client_for(owner), str(stream.id), 25)


async def test_a_retry_with_the_same_client_message_id_does_not_count(make_user, make_stream, client_for):
    client = client_for(await make_user())
    stream_id = str((await make_stream()).id)
    await _send_ok(client, stream_id, 19)
    first = await client.data(SEND, {"s": stream_id, "c": "last", "id": "c-last"})

    # The window is full, yet a retry of an acknowledged message still gets its original back.
    again = await client.data(SEND, {"s": stream_id, "c": "last", "id": "c-last"})
    refused = await client.error(SEND, {"s": stream_id, "c": "new", "id": "c-new"})

    assert again == first
    _assert_rate_limited(refused)


@pytest.fixture(scope="module")
async def unlimited(server, make_settings) -> AsyncIterator[LiveServer]:
    """RATE_LIMIT_MESSAGES=0, on the session app's database."""
    app = create_app(make_settings(rate_limit_messages=0), database=server.services.database)
    async with serve(app) as live:
        yield live


async def test_zero_turns_the_limit_off(unlimited, make_user, make_stream):
    user = await make_user()
    stream_id = str((await make_stream()).id)
    async with httpx.AsyncClient(base_url=unlimited.url) as http:
        await _send_ok(GraphQLClient(http, unlimited.token(user)), stream_id, 25)


@pytest.mark.slow
async def test_the_limit_holds_across_replicas(server, make_user, make_stream, client_for, tmp_path):
    """A second `gql-api serve` process on the same database shares the counters."""
    settings = server.app.settings
    assert settings.mongodb_uri is not None
    user = await make_user()
    stream_id = str((await make_stream()).id)
    here = client_for(user)
    await _send_ok(here, stream_id, 10, prefix="a")

    async with (
        api_process(
            tmp_path,
            MONGODB_URI=settings.mongodb_uri.get_secret_value(),
            MONGODB_DB=settings.mongodb_db,
            JWT_SECRET=TEST_SECRET,
        ) as replica,
        httpx.AsyncClient(base_url=replica.url, timeout=10) as http,
    ):
        there = GraphQLClient(http, server.token(user))
        await _send_ok(there, stream_id, 10, prefix="b")
        refused_there = await there.error(SEND, {"s": stream_id, "c": "21st"})
        refused_here = await here.error(SEND, {"s": stream_id, "c": "22nd"})

    _assert_rate_limited(refused_there)
    _assert_rate_limited(refused_here)


async def test_concurrent_retries_of_one_client_message_id_use_one_slot(make_user, make_stream, client_for):
    """Ten retries racing each other store one message and count once (they used to take ten)."""
    client = client_for(await make_user())
    stream_id = str((await make_stream()).id)
    retry = {"s": stream_id, "c": "racy", "id": "c-race"}

    results = await asyncio.gather(*(client.data(SEND, retry) for _ in range(10)))
    await _send_ok(client, stream_id, 19)
    refused = await client.error(SEND, {"s": stream_id, "c": "21st"})

    assert len({r["sendChatMessage"]["id"] for r in results}) == 1
    _assert_rate_limited(refused)


async def test_concurrent_rest_retries_of_one_client_message_id_use_one_slot(
    server, http, make_user, make_stream, client_for
):
    user = await make_user()
    stream_id = str((await make_stream()).id)
    url = f"/api/v1/live-stream/{stream_id}/chat/messages"
    headers = {"Authorization": server.token(user)}

    retries = await asyncio.gather(
        *(http.post(url, json={"content": "racy", "clientMessageId": "c-race"}, headers=headers) for _ in range(10))
    )
    await _send_ok(client_for(user), stream_id, 19)
    refused = await http.post(url, json={"content": "21st"}, headers=headers)

    assert {r.status_code for r in retries} == {201}
    assert len({r.json()["_id"] for r in retries}) == 1
    assert refused.status_code == 429


async def _raw_error(client: GraphQLClient, variables: dict) -> dict:
    """The one error of SEND, posted as ASCII JSON (a lone surrogate as its ``\\ud83d`` escape,
    which httpx's own encoder refuses to send)."""
    body = json.dumps({"query": SEND, "variables": variables}).encode()
    headers = {"Content-Type": "application/json", "Authorization": client.token or ""}
    response = await client.http.post("/graphql", content=body, headers=headers)
    [error] = response.json()["errors"]
    return error


@pytest.mark.parametrize(
    "variables",
    [
        {"c": "broken \ud83d"},
        {"c": "fine", "id": "broken \ud83d"},
        {"c": "\u200b\ufeff"},
        {"c": "a\u0000b"},
        {"c": ""},
    ],
)
async def test_a_send_that_fails_validation_takes_no_slot(make_user, make_stream, client_for, variables):
    client = client_for(await make_user())
    stream_id = str((await make_stream()).id)

    for _ in range(3):
        error = await _raw_error(client, {"s": stream_id, **variables})
        assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}
    await _send_ok(client, stream_id, 20)
    _assert_rate_limited(await client.error(SEND, {"s": stream_id, "c": "21st"}))


# -- the window, the retries, slow mode: the rules on their own ------------------------------------


def _sent(*seconds: float, key: str | None = None) -> list[Sent]:
    return [Sent(int(1_000_000_000 + t * 1000), key) for t in seconds]


def _at(seconds: float) -> int:
    return int(1_000_000_000 + seconds * 1000)


def test_the_window_slides():
    """No span of `window` seconds holds more than `limit` messages, across any boundary."""
    limiter = MessageRateLimiter(3, 30)
    assert limiter.check(_sent(0, 10), "k20", _at(20)) is False

    with pytest.raises(RateLimited) as full:
        limiter.check(_sent(0, 10, 20), "k25", _at(25))
    assert limiter.check(_sent(0, 10, 20), "k30", _at(30.001)) is False  # the one at 0 has left
    with pytest.raises(RateLimited) as again:
        limiter.check(_sent(0, 10, 20, 30), "k31", _at(31))

    assert full.value.retry_after == 5  # when the message sent at 0 leaves the window
    assert again.value.retry_after == 9  # when the one sent at 10 does
    assert again.value.extensions == {"code": "RATE_LIMITED", "statusCode": 429, "retryAfter": 9}


def test_a_message_sent_already_is_a_retry_and_takes_no_slot():
    limiter = MessageRateLimiter(3, 30)
    sent = [*_sent(0, 1), *_sent(2, key="c:u:same")]
    assert limiter.check(sent, "c:u:same", _at(3)) is True  # full, yet its own slot
    assert limiter.check(sent, "c:u:same", _at(3), min_interval_seconds=60) is True
    with pytest.raises(RateLimited):
        limiter.check(sent, "c:u:other", _at(3))


@pytest.mark.parametrize("limit", [0, 3])  # with the rate limit off, slow mode alone still holds
def test_slow_mode_refuses_a_message_sooner_than_the_gap_after_the_newest(limit):
    limiter = MessageRateLimiter(limit, 30)

    with pytest.raises(RateLimited) as early:
        limiter.check(_sent(0), "k1", _at(6.5), min_interval_seconds=10)
    assert limiter.check(_sent(0), "k1", _at(10), min_interval_seconds=10) is False  # exactly the gap
    assert limiter.check([], "k1", _at(0), min_interval_seconds=10) is False

    assert early.value.retry_after == 4  # 3.5 s rounded up
    assert early.value.extensions == {"code": "RATE_LIMITED", "statusCode": 429, "retryAfter": 4}
    assert "slow mode is on, one message every 10 seconds" in early.value.message


def test_the_send_log_keeps_what_can_still_refuse_and_notes_each_entry_once():
    log = MessageRateLimiter(2, 30).new_log(longest_gap_seconds=120)
    assert log.horizon_ms == 120_000
    log.note(1, "a", _at(0), "r:1")
    log.note(2, "b", _at(1), "c:b:x")
    log.note(3)  # an entry that counts for nobody
    log.note(4, "a", _at(2), "r:2")
    log.note(5, "a", _at(3), "r:3")
    log.note(4, "a", _at(2), "r:2")  # read twice: noted once

    assert log.position == 5
    assert [s.at_ms for s in log.of("a")] == [_at(2), _at(3)]  # the newest `limit`
    assert [s.dedup_key for s in log.of("b")] == ["c:b:x"]  # only a client's key can come again
    assert [s.dedup_key for s in log.of("a")] == [None, None]

    log.note(6, "c", _at(121.5))  # b's newest left the horizon, a's did not yet
    assert list(log.of("b")) == [] and len(list(log.of("a"))) == 2 and len(log) == 2


# -- through the service: the log is the counter ---------------------------------------------------


class CallsStore(ChatStore):
    """The real store, recording which of its operations are called."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattribute__(self, name: str):
        value = super().__getattribute__(name)
        if not name.startswith("_") and name != "calls" and callable(value):
            self.calls.append(name)
        return value


def _replica(server, limit: int = 3, store: ChatStore | None = None) -> ChatService:
    """Another process's service on the same database: its own rosters, its own commits."""
    live = server.services
    return ChatService(live.hub, live.delivery, MessageRateLimiter(limit, 30), store=store or ChatStore())


async def _stored(server, stream_id: str) -> list[str]:
    return [m.content async for m in server.chat.store.replay(stream_id, after=0)]


async def test_concurrent_sends_of_one_user_store_exactly_the_limit(server, make_user, make_stream):
    """They are numbered in the same group commits: each counts the ones numbered before it."""
    chat = _replica(server, limit=20)
    user, stream_id = await make_user(), str((await make_stream()).id)

    results = await asyncio.gather(
        *(chat.send_message(user, stream_id, f"m{n}") for n in range(30)), return_exceptions=True
    )

    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 10 and all(isinstance(r, RateLimited) for r in refused)
    assert len(await _stored(server, stream_id)) == 20


async def test_concurrent_sends_in_slow_mode_store_one(server, make_user, make_stream, client_for):
    owner, viewer = await make_user(), await make_user()
    stream_id = str((await make_stream(owner)).id)
    update = "mutation($s: ID!) { updateChatSettings(streamId: $s, slowModeSeconds: 60) { slowModeSeconds } }"
    await client_for(owner).data(update, {"s": stream_id})

    results = await asyncio.gather(
        *(server.chat.send_message(viewer, stream_id, f"m{n}") for n in range(10)), return_exceptions=True
    )

    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, RateLimited) for r in results if isinstance(r, BaseException))


async def test_a_send_takes_one_round_trip_the_insert(server, make_user, make_stream):
    store = CallsStore()
    chat = _replica(server, store=store)
    user, stream_id = await make_user(), str((await make_stream()).id)
    await chat.send_message(user, stream_id, "reads the stream and its roster")
    store.calls.clear()

    await chat.send_message(user, stream_id, "counted without a read or a write of its own")

    assert store.calls == ["insert_lone_entries"]


async def test_messages_stored_through_another_replica_count_here(server, make_user, make_stream):
    """Read afresh, a roster counts the messages in the log; one read before them catches up
    when its commit finds their numbers taken."""
    here, there = _replica(server), _replica(server)
    early, late = await make_user(), await make_user()
    stream_id = str((await make_stream()).id)
    await here.send_message(early, stream_id, "here knows the stream from now on")
    for n in range(3):
        if n < 2:
            await there.send_message(early, stream_id, f"there {n}")
        await there.send_message(late, stream_id, f"there {n}")

    with pytest.raises(RateLimited):  # its roster is behind, and passes it: refused at the commit
        await here.send_message(early, stream_id, "fourth")
    with pytest.raises(RateLimited):  # a replica that starts now reads them from the log
        await _replica(server).send_message(late, stream_id, "fourth")
    assert len(await _stored(server, stream_id)) == 6


async def test_a_roster_read_again_keeps_counting_without_reading_the_messages_again(server, make_user, make_stream):
    store = CallsStore()
    chat = _replica(server, store=store)
    user, stream_id = await make_user(), str((await make_stream()).id)
    for n in range(3):
        await chat.send_message(user, stream_id, f"m{n}")
    roster = chat._writers.roster(stream_id)
    assert roster is not None
    roster.read_at -= REFRESH_SECONDS + 1  # stale: the next send reads the documents again
    store.calls.clear()

    with pytest.raises(RateLimited):
        await chat.send_message(user, stream_id, "fourth")

    assert "members" in store.calls and "recent_entries" not in store.calls
    assert chat._writers.roster(stream_id) is not roster
    assert isinstance(chat._writers.roster(stream_id).sends, SendLog)
