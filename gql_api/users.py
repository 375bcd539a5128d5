"""Creating and finding users: the stand-in for the platform's own user service."""

from __future__ import annotations

import re

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from gql_api.compat import eq
from gql_api.documents import ProfilePhoto, User
from gql_api.errors import BadUserInput, Conflict, NotFound

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.]{2,31}$")


async def create_user(
    username: str, *, name: str = "", surname: str = "", photo_url: str | None = None
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
        await user.insert()
    except DuplicateKeyError as exc:
        raise Conflict(f"Resource already exists: the username {username!r} is taken") from exc
    return user


async def find_user(username: str) -> User | None:
    """The user with this username, or None."""
    return await User.find_one({"username": eq(username.strip().lower())})


async def get_user(username: str) -> User:
    """The user with this username; NotFound when there is none."""
    user = await find_user(username)
    if user is None:
        raise NotFound(f"Resource not found: no user is called {username!r}")
    return user
