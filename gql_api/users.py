"""Creating and finding users: the stand-in for the platform's own user service."""

from __future__ import annotations

import re

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
        raise BadUserInput(
            "Validation failed: a username is 3 to 32 characters of a-z, 0-9, '_' and '.'"
        )
    photo = None
    if photo_url:
        photo = ProfilePhoto(
            id=str(ObjectId()), url=photo_url, variants={"40": photo_url, "76": photo_url}
        )
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
