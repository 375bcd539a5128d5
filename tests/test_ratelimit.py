"""The per-user rate limit: 20 messages per 30 seconds per user per stream, shared by every replica."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from gql_api.app import create_app
from gql_api.errors import RateLimited
from gql_api.ratelimit import MessageRateLimiter
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


async def test_the_window_slides(server, make_user, make_stream):
    """No span of `window` seconds holds more than `limit` messages, across any boundary."""
    now = [1_000_000.0]
    limiter = MessageRateLimiter(3, 30, store=server.chat.store, clock=lambda: now[0])
    stream_id, user_id = str((await make_stream()).id), str((await make_user()).id)
    for t in (0, 10, 20):
        now[0] = 1_000_000 + t
        await limiter.acquire(stream_id, user_id, f"k{t}")

    now[0] = 1_000_025
    with pytest.raises(RateLimited) as full:
        await limiter.acquire(stream_id, user_id, "k25")
    now[0] = 1_000_030.001  # the message at 0 has left the window
    await limiter.acquire(stream_id, user_id, "k30")
    now[0] = 1_000_031
    with pytest.raises(RateLimited) as again:
        await limiter.acquire(stream_id, user_id, "k31")

    assert full.value.retry_after == 5  # when the message sent at 0 leaves the window
    assert again.value.retry_after == 9  # when the one sent at 10 does
    assert again.value.extensions == {"code": "RATE_LIMITED", "statusCode": 429, "retryAfter": 9}


async def test_concurrent_sends_admit_exactly_the_limit(server, make_user, make_stream):
    limiter = MessageRateLimiter(20, 30, store=server.chat.store)
    stream_id, user_id = str((await make_stream()).id), str((await make_user()).id)

    results = await asyncio.gather(
        *(limiter.acquire(stream_id, user_id, f"k{n}") for n in range(30)), return_exceptions=True
    )

    assert sum(not isinstance(r, BaseException) for r in results) == 20
    assert all(isinstance(r, RateLimited) for r in results if isinstance(r, BaseException))


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


async def test_admitting_the_same_message_again_takes_no_slot(server, make_user, make_stream):
    limiter = MessageRateLimiter(3, 30, store=server.chat.store)
    stream_id, user_id = str((await make_stream()).id), str((await make_user()).id)

    same = await asyncio.gather(*(limiter.acquire(stream_id, user_id, "k-same") for _ in range(10)))
    await limiter.acquire(stream_id, user_id, "k-2")
    await limiter.acquire(stream_id, user_id, "k-same")  # the window is full: still its own slot
    await limiter.acquire(stream_id, user_id, "k-3")

    assert not any(isinstance(r, BaseException) for r in same)
    with pytest.raises(RateLimited):
        await limiter.acquire(stream_id, user_id, "k-4")


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


async def test_a_users_next_send_through_the_same_replica_is_admitted_in_one_round_trip(server, make_user, make_stream):
    """The window this process wrote last is swapped against directly; a stale one (another
    replica wrote since) fails its swap and is read again, so the limit still holds."""
    from gql_api.store import ChatStore

    class CountingStore(ChatStore):
        def __init__(self) -> None:
            self.calls: list[str] = []

        async def rate_window(self, key: str):
            self.calls.append("read")
            return await super().rate_window(key)

        async def swap_rate_windows(self, swaps):
            self.calls.append("swap")
            return await super().swap_rate_windows(swaps)

    store = CountingStore()
    here, elsewhere = MessageRateLimiter(3, 30, store=store), MessageRateLimiter(3, 30, store=store)
    stream, user = str((await make_stream()).id), str((await make_user()).id)
    await here.acquire(stream, user, "k1")
    store.calls.clear()
    await here.acquire(stream, user, "k2")
    assert store.calls == ["swap"]
    await elsewhere.acquire(stream, user, "k3")  # another replica: the window is full now
    store.calls.clear()
    with pytest.raises(RateLimited):
        await here.acquire(stream, user, "k4")
    assert store.calls == ["swap", "read"]


# -- slow mode: a minimum gap between one user's messages, in the same window ----------------------


@pytest.mark.parametrize("limit", [0, 3])  # with the rate limit off, slow mode alone still holds
async def test_slow_mode_refuses_a_message_sooner_than_the_gap_after_the_previous(
    server, make_user, make_stream, limit
):
    now = [1_000_000.0]
    limiter = MessageRateLimiter(limit, 30, store=server.chat.store, clock=lambda: now[0])
    stream_id, user_id = str((await make_stream()).id), str((await make_user()).id)
    await limiter.acquire(stream_id, user_id, "k0", min_interval_seconds=10)

    now[0] += 6.5
    with pytest.raises(RateLimited) as early:
        await limiter.acquire(stream_id, user_id, "k1", min_interval_seconds=10)
    await limiter.acquire(stream_id, user_id, "k0", min_interval_seconds=10)  # a retry: admitted
    now[0] += 3.5  # exactly the gap after the first
    await limiter.acquire(stream_id, user_id, "k2", min_interval_seconds=10)
    await limiter.acquire(str((await make_stream()).id), user_id, "k3", min_interval_seconds=10)  # per stream

    assert early.value.retry_after == 4  # 3.5 s rounded up
    assert early.value.extensions == {"code": "RATE_LIMITED", "statusCode": 429, "retryAfter": 4}
    assert "slow mode is on, one message every 10 seconds" in early.value.message


async def test_slow_mode_holds_across_replicas_sharing_the_window(server, make_user, make_stream):
    now = [2_000_000.0]
    here = MessageRateLimiter(0, 30, store=server.chat.store, clock=lambda: now[0])
    there = MessageRateLimiter(0, 30, store=server.chat.store, clock=lambda: now[0])
    stream_id, user_id = str((await make_stream()).id), str((await make_user()).id)
    await here.acquire(stream_id, user_id, "k0", min_interval_seconds=5)
    now[0] += 6
    await there.acquire(stream_id, user_id, "k1", min_interval_seconds=5)
    now[0] += 1
    with pytest.raises(RateLimited) as refused:
        await here.acquire(stream_id, user_id, "k2", min_interval_seconds=5)  # its remembered window is stale
    assert refused.value.retry_after == 4


async def test_concurrent_sends_in_slow_mode_admit_one(server, make_user, make_stream):
    limiter = MessageRateLimiter(0, 30, store=server.chat.store)
    stream_id, user_id = str((await make_stream()).id), str((await make_user()).id)

    results = await asyncio.gather(
        *(limiter.acquire(stream_id, user_id, f"k{n}", min_interval_seconds=60) for n in range(10)),
        return_exceptions=True,
    )

    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert admitted == [None]  # the first: no message before it
    assert all(isinstance(r, RateLimited) for r in results if isinstance(r, BaseException))


async def test_without_slow_mode_a_disabled_limiter_stores_nothing():
    class NoStore:
        def __getattr__(self, name: str):
            raise AssertionError(f"the store was asked {name}")

    limiter = MessageRateLimiter(0, 30, store=NoStore())  # type: ignore[arg-type]
    await limiter.acquire("s", "u", "k", min_interval_seconds=0)


async def test_a_first_message_creates_the_window_in_one_round_trip_and_says_when_the_last_was(
    server, make_user, make_stream
):
    moments = [1_000.0]
    stream_id, user_id = str((await make_stream()).id), str((await make_user()).id)
    limiter = MessageRateLimiter(5, 30, store=server.chat.store, clock=lambda: moments[-1])
    assert await limiter.acquire(stream_id, user_id, "k1") is None
    moments.append(1_002.5)
    assert await limiter.acquire(stream_id, user_id, "k2") == 1_000_000

    # A process that remembers nothing of the window tries to create it, finds it, reads it.
    other = MessageRateLimiter(5, 30, store=server.chat.store, clock=lambda: moments[-1])
    moments.append(1_004.0)
    assert await other.acquire(stream_id, user_id, "k3") == 1_002_500
    window = await server.chat.store.rate_window(f"{stream_id}:{user_id}")
    assert [key for _, key in window.entries] == ["k3", "k2", "k1"]


async def test_concurrent_senders_share_one_round_trip(server, make_user, make_stream):
    from gql_api.store import ChatStore

    class CountingStore(ChatStore):
        def __init__(self) -> None:
            self.batches: list[int] = []

        async def swap_rate_windows(self, swaps):
            self.batches.append(len(swaps))
            return await super().swap_rate_windows(swaps)

    store = CountingStore()
    limiter = MessageRateLimiter(3, 30, store=store)
    streams = [str((await make_stream()).id) for _ in range(4)]
    users = [str((await make_user()).id) for _ in range(5)]

    await asyncio.gather(*(limiter.acquire(s, u, f"k-{s}-{u}") for s in streams for u in users))
    assert store.batches == [20]  # four streams, five users: one round trip
    windows = [await store.rate_window(f"{s}:{u}") for s in streams for u in users]
    assert all(w is not None and len(w.entries) == 1 for w in windows)
