"""Creating and finding users: the stand-in for the platform's own user service."""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict

from bson import ObjectId

from gql_api.documents import ProfilePhoto, User
from gql_api.errors import BadUserInput, Conflict, NotFound
from gql_api.store import ChatStore, UsernameTaken

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.]{2,31}$")


async def create_user(
    store: ChatStore, username: str, *, name: str = "", surname: str = "", photo_url: str | None = None
) -> User:
    """A new user; Conflict when the username is taken."""
    username = username.strip().lower()
    if not USERNAME_PATTERN.match(username):
        raise BadUserInput("Validation failed: a username is 3 to 32 characters of a-z, 0-9, '_' and '.'")
    photo = None
    if photo_url:
        photo = ProfilePhoto(id=str(ObjectId()), url=photo_url, variants={"40": photo_url, "76": photo_url})
    user = User(
        username=username,
        name=name or username.capitalize(),
        surname=surname,
        profile_photo=photo,
    )
    try:
        await store.insert_user(user)
    except UsernameTaken as exc:
        raise Conflict(f"Resource already exists: the username {username!r} is taken") from exc
    return user


async def find_user(store: ChatStore, username: str) -> User | None:
    """The user with this username, or None."""
    return await store.user_by_username(username.strip().lower())


async def get_user(store: ChatStore, username: str) -> User:
    """The user with this username; NotFound when there is none."""
    user = await find_user(store, username)
    if user is None:
        raise NotFound(f"Resource not found: no user is called {username!r}")
    return user


class UserCache:
    """Users by id, as the token of each request names one, kept fresh by a change stream.

    Serves only while a change stream on the users collection is open (``live``): every
    change to a user, made by any replica or by the platform's user service, drops that user
    here, and a stream that (re)opens starts from nothing, as it may have missed changes.
    A read that a change overtook is not kept (``generation``): the change may be newer.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._users: OrderedDict[str, User] = OrderedDict()
        self._live = False
        # Set while the cache serves (for tests and tooling to wait on).
        self.serving = asyncio.Event()
        # Bumped by every change: a read begun before one is not cached.
        self.generation = 0

    def get(self, user_id: str) -> User | None:
        """The cached user, or None (also while no change stream is open)."""
        return self._users.get(user_id) if self._live else None

    def put(self, user: User, generation: int) -> None:
        """Cache a user read when ``generation`` was current, unless a change came since."""
        if not self._live or generation != self.generation:
            return
        key = str(user.id)
        self._users[key] = user
        self._users.move_to_end(key)
        if len(self._users) > self._capacity:
            self._users.popitem(last=False)

    def changed(self, user_id: str) -> None:
        """A user was changed, replaced or deleted."""
        self.generation += 1
        self._users.pop(user_id, None)

    def opened(self) -> None:
        """The change stream is open: from now on every change arrives."""
        self._reset()
        self._live = True
        self.serving.set()

    def closed(self) -> None:
        """The change stream broke or stopped: changes may be missed, so serve nothing."""
        self._reset()
        self._live = False
        self.serving.clear()

    def _reset(self) -> None:
        self.generation += 1
        self._users.clear()
