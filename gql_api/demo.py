"""Demo data for development: three users and a LIVE stream to chat in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from gql_api.auth import Authenticator
from gql_api.documents import User
from gql_api.service import ChatService
from gql_api.store import ChatStore
from gql_api.users import create_user, find_user

DEMO_USERS = {
    "alice": ("Alice", "Archer"),
    "bob": ("Bob", "Baker"),
    "carol": ("Carol", "Cooper"),
}
DEMO_OWNER = "carol"
DEMO_STREAM_TITLE = "gql_api demo stream"


class DemoUserJson(TypedDict):
    id: str
    token: str


class DemoJson(TypedDict):
    """What ``gql-api demo --json`` prints."""

    streamId: str
    users: dict[str, DemoUserJson]


@dataclass(frozen=True)
class DemoData:
    stream_id: str
    users: dict[str, User]

    def as_json(self, authenticator: Authenticator) -> DemoJson:
        """The shape ``gql-api demo --json`` prints: the stream and a fresh token per user."""
        return {
            "streamId": self.stream_id,
            "users": {
                username: {"id": str(user.id), "token": authenticator.issue(str(user.id))}
                for username, user in self.users.items()
            },
        }


async def ensure_demo_data(chat: ChatService) -> DemoData:
    """Create whatever part of the demo data is missing; safe to call any number of times."""
    users: dict[str, User] = {}
    for username, (name, surname) in DEMO_USERS.items():
        user = await find_user(chat.store, username)
        if user is None:
            user = await create_user(
                chat.store,
                username,
                name=name,
                surname=surname,
                photo_url=f"https://i.pravatar.cc/300?u={username}",
            )
        users[username] = user
    owner = users[DEMO_OWNER]
    stream = await chat.store.live_stream_titled(str(owner.id), DEMO_STREAM_TITLE)
    if stream is None:
        stream = await chat.create_stream(owner, DEMO_STREAM_TITLE)
    return DemoData(stream_id=str(stream.id), users=users)


async def database_is_empty(store: ChatStore) -> bool:
    """Whether no user exists yet (a fresh database)."""
    return not await store.has_users()
