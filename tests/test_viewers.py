"""Viewer counts: each replica's live subscribers, published and summed across replicas."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
import websockets

from gql_api.app import create_app
from gql_api.hub import MessageHub
from gql_api.viewers import PRESENCE_INTERVALS, ReplicaPresence, ViewerCounts
from tests.conftest import TEST_SECRET, LiveServer, api_process, serve

VIEWER_COUNT = "query($s: ID!) { liveStream(id: $s) { viewerCount } }"
SUBSCRIBE = "subscription($s: ID!) { messageAdded(streamId: $s) { id } }"
# Generous: a loaded machine may take a while; a healthy one is done in a few intervals.
DEADLINE = 30


# -- ViewerCounts, in memory -------------------------------------------------------------


async def test_changes_yield_the_current_total_then_each_new_one():
    viewers = ViewerCounts()
    viewers.update({"s": 2, "other": 1})
    changes = viewers.changes("s")

    assert await anext(changes) == 2
    pending = asyncio.ensure_future(anext(changes))
    assert viewers.update({"s": 2, "other": 5}) == {"other"}  # not this stream's change
    await asyncio.sleep(0)
    assert not pending.done()
    assert viewers.update({"other": 5}) == {"s"}  # left out: nobody watches it any more
    assert await asyncio.wait_for(pending, DEADLINE) == 0
    assert viewers.total("s") == 0


async def test_a_consumer_that_held_a_value_gets_the_newest_total_without_waiting():
    viewers = ViewerCounts()
    changes = viewers.changes("s")
    assert await anext(changes) == 0
    viewers.update({"s": 1})  # while the consumer was busy with the 0:
    viewers.update({"s": 4})
    assert await asyncio.wait_for(anext(changes), DEADLINE) == 4


# -- ReplicaPresence on the real database, with a clock the test moves ---------------------


class Clock:
    def __init__(self) -> None:
        # Near the real time: the session's app deletes presences expired by its own clock.
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


INTERVAL = 5.0


def _replica(server: LiveServer, clock: Clock) -> ReplicaPresence:
    hub: MessageHub = MessageHub(server.services.store)
    return ReplicaPresence(server.services.store, hub, ViewerCounts(), interval_seconds=INTERVAL, clock=clock)


async def _presences(server: LiveServer) -> dict[str, int]:
    """Each stored presence's expiry, by replica id."""
    return {p.id: p.expires_at_ms for p in await server.services.store.presences()}


async def test_replicas_sum_their_subscribers_and_a_dead_one_stops_counting_once_expired(server, make_stream):
    clock = Clock()
    a, b = _replica(server, clock), _replica(server, clock)
    stream_id = str((await make_stream()).id)
    async with AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(a.hub.subscribe(stream_id))
        await stack.enter_async_context(b.hub.subscribe(stream_id))
        await a.refresh()
        await b.refresh()
        assert b.viewers.total(stream_id) == 3
        await a.refresh()
        assert a.viewers.total(stream_id) == 3

        # a dies: it stops refreshing, its subscribers still in its (lost) memory.
        clock.now += PRESENCE_INTERVALS * INTERVAL - 0.01
        await b.refresh()
        assert b.viewers.total(stream_id) == 3  # not expired yet
        clock.now += 0.01
        await b.refresh()
        assert b.viewers.total(stream_id) == 1
        assert a.replica_id not in await _presences(server)  # the expired presence is gone


async def test_a_replica_writes_when_its_counts_change_or_near_expiry_and_nothing_when_idle(server, make_stream):
    clock = Clock()
    a, b = _replica(server, clock), _replica(server, clock)
    stream_id = str((await make_stream()).id)

    await a.refresh()
    assert a.replica_id not in await _presences(server)  # no subscribers: nothing written

    async with a.hub.subscribe(stream_id):
        await a.refresh()
        written = (await _presences(server))[a.replica_id]
        clock.now += INTERVAL
        await a.refresh()
        assert (await _presences(server))[a.replica_id] == written  # unchanged, far from expiry
        clock.now += INTERVAL
        await a.refresh()
        refreshed = (await _presences(server))[a.replica_id]
        assert refreshed > written

        async with a.hub.subscribe(stream_id):
            await a.refresh()  # a change is written at once, whatever the expiry
            await b.refresh()
            assert b.viewers.total(stream_id) == 2
        await a.refresh()
        await b.refresh()
        assert b.viewers.total(stream_id) == 1

    await a.refresh()
    assert a.replica_id not in await _presences(server)  # the last one left: deleted
    await b.refresh()
    assert b.viewers.total(stream_id) == 0


async def test_a_replica_that_stops_deletes_its_presence_at_once(server, make_stream):
    a = _replica(server, Clock())
    stream_id = str((await make_stream()).id)
    async with a.hub.subscribe(stream_id):
        a.start()
        await asyncio.wait_for(a.viewers.wait_for(stream_id, 1), DEADLINE)  # its first round is done
        assert a.replica_id in await _presences(server)
        await a.stop()  # with its subscriber still there: a shutdown, not an idle replica
        assert a.replica_id not in await _presences(server)


# -- the running apps: two replicas on one database -----------------------------------------


@asynccontextmanager
async def _subscribed(live: LiveServer, token: str, stream_id: str) -> AsyncIterator[None]:
    """A messageAdded subscription over a real websocket, for the duration of the block."""
    async with websockets.connect(live.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), DEADLINE))["type"] == "connection_ack"
        payload = {"query": SUBSCRIBE, "variables": {"s": stream_id}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        yield


async def _viewer_count(live: LiveServer, token: str, stream_id: str) -> int:
    async with httpx.AsyncClient(base_url=live.url, timeout=DEADLINE, headers={"Authorization": token}) as http:
        response = await http.post("/graphql", json={"query": VIEWER_COUNT, "variables": {"s": stream_id}})
    body = response.json()
    assert "errors" not in body, body
    return int(body["data"]["liveStream"]["viewerCount"])


async def _counted(replicas: list[LiveServer], token: str, stream_id: str, total: int) -> list[int]:
    """Once every replica's total is ``total``, what each answers over GraphQL."""
    for live in replicas:
        await asyncio.wait_for(live.services.viewers.wait_for(stream_id, total), DEADLINE)
    return [await _viewer_count(live, token, stream_id) for live in replicas]


async def test_viewer_count_is_the_live_subscribers_on_every_replica(server, make_settings, make_user, make_stream):
    stream_id = str((await make_stream()).id)
    token = server.token(await make_user())
    settings = make_settings(viewer_count_interval_seconds=0.2)
    database = server.services.database
    async with serve(create_app(settings, database=database)) as b, _subscribed(b, token, stream_id):
        async with serve(create_app(settings, database=database)) as a, AsyncExitStack() as stack:
            a_id = a.services.presence.replica_id
            for _ in range(2):
                await stack.enter_async_context(_subscribed(a, token, stream_id))
            assert await _counted([a, b], token, stream_id, 3) == [3, 3]

            async with _subscribed(b, token, stream_id):
                assert await _counted([a, b], token, stream_id, 4) == [4, 4]
            # The subscriber left: the count drops at the next round.
            assert await _counted([a, b], token, stream_id, 3) == [3, 3]

        # a shut down cleanly: its presence is gone at once, not left to expire.
        assert a_id not in await _presences(server)
        assert await _counted([b], token, stream_id, 1) == [1]


@pytest.mark.slow
async def test_a_replica_killed_without_warning_stops_counting(
    server, make_settings, make_user, make_stream, mongo_uri, tmp_path
):
    stream_id = str((await make_stream()).id)
    token = server.token(await make_user())
    settings = make_settings(viewer_count_interval_seconds=0.2)
    env = {
        "MONGODB_URI": mongo_uri,
        "MONGODB_DB": settings.mongodb_db,
        "JWT_SECRET": TEST_SECRET,
        "VIEWER_COUNT_INTERVAL_SECONDS": "0.5",
    }
    async with serve(create_app(settings, database=server.services.database)) as b, api_process(tmp_path, **env) as api:
        other = LiveServer(app=b.app, services=b.services, url=api.url, ws_url=api.ws_url)
        async with _subscribed(other, token, stream_id), _subscribed(b, token, stream_id):
            await asyncio.wait_for(b.services.viewers.wait_for(stream_id, 2), DEADLINE)
            api.process.kill()  # no shutdown: its presence stays behind
            await api.process.wait()
            # Its presence expires 3 of its intervals after its last write; b drops it then.
            await asyncio.wait_for(b.services.viewers.wait_for(stream_id, 1), DEADLINE)
            assert await _viewer_count(b, token, stream_id) == 1
