"""Users: the cache that spares each request its user lookup, and what keeps it fresh."""

from __future__ import annotations

import asyncio

from bson import ObjectId

from gql_api.documents import User
from gql_api.users import UserCache

ME = "{ me { name } }"


def _user(name: str = "Ann") -> User:
    return User.model_construct(id=ObjectId(), username="ann", name=name, surname="")


def test_the_cache_serves_only_while_its_change_stream_is_open():
    cache, user = UserCache(), _user()
    cache.put(user, cache.generation)
    assert cache.get(str(user.id)) is None  # not open yet: nothing is kept
    cache.opened()
    cache.put(user, cache.generation)
    assert cache.get(str(user.id)) is user
    cache.closed()
    assert cache.get(str(user.id)) is None
    cache.opened()
    assert cache.get(str(user.id)) is None  # reopened: it may have missed changes


def test_a_read_that_a_change_overtook_is_not_kept():
    cache, user = UserCache(), _user()
    cache.opened()
    generation = cache.generation  # a read begins
    cache.changed(str(user.id))  # the user changes meanwhile
    cache.put(user, generation)  # the read (perhaps of the old user) ends
    assert cache.get(str(user.id)) is None
    cache.put(user, cache.generation)
    cache.changed(str(user.id))
    assert cache.get(str(user.id)) is None


async def test_a_user_changed_in_the_database_is_seen_by_the_next_request(server, make_user, client_for, monkeypatch):
    cache = server.services.authenticator.users
    await asyncio.wait_for(cache.serving.wait(), 30)
    seen: dict[str, asyncio.Event] = {}
    changed = cache.changed

    def record(user_id: str) -> None:  # the real method, and a signal per user it was told of
        changed(user_id)
        seen.setdefault(user_id, asyncio.Event()).set()

    monkeypatch.setattr(cache, "changed", record)
    user = await make_user(name="Before")
    # The insert's own event drops the user too: wait for it, or it could land after the
    # request below and empty the cache again.
    await asyncio.wait_for(seen.setdefault(str(user.id), asyncio.Event()).wait(), 30)
    seen[str(user.id)].clear()
    client = client_for(user)
    assert (await client.data(ME))["me"]["name"] == "Before"
    assert cache.get(str(user.id)) is not None  # served from the cache now

    # As the platform's user service (or another replica) would: straight in the database.
    await User.get_pymongo_collection().update_one({"_id": user.id}, {"$set": {"name": "After"}})
    await asyncio.wait_for(seen[str(user.id)].wait(), 30)  # the change stream's event
    assert (await client.data(ME))["me"]["name"] == "After"
