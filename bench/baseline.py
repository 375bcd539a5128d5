"""The benchmark's baseline: a plain Strawberry app, written the way Strawberry's documentation
shows subscriptions (an ``asyncio.Queue`` per subscriber, the resolver yielding each event, and
Strawberry executing the selection set and encoding the frame per subscriber and event).

It serves the same operations the benchmark drives on the project, with the same GraphQL types
and field names:

- ``messageAdded(streamId)``: every message sent to the stream after subscribing;
- ``sendChatMessage(streamId, content, clientMessageId)``: stores the message in memory and puts
  it on every subscriber's queue of that stream;
- ``chatMessages(streamId, last)``: the newest messages (kept for completeness, not measured).

Authentication is the same as the project's, minus the user lookup in the database: a HS256 JWT
(``sub``, ``exp``, ``iat``) in the ``Authorization`` header or the ``connection_init`` payload,
verified with PyJWT, naming one of the users given in ``BENCH_USERS_FILE``. Storage is in memory (the
newest ``HISTORY_LIMIT`` messages per stream), so the baseline never waits for a database: the
comparison is between delivery paths, and it favours the baseline.

Run by ``bench/run.py``: ``python bench/baseline.py --port PORT`` with ``BENCH_JWT_SECRET``,
``BENCH_USERS_FILE`` (a JSON file: id -> {username, name, surname}) and ``BENCH_STREAM_ID`` in the
environment.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
from collections import defaultdict, deque
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import jwt
import strawberry
import uvicorn
from bson import ObjectId
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

HISTORY_LIMIT = 10_000


def utcnow() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def isoformat_z(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


DATETIME = strawberry.scalar(name="DateTime", serialize=isoformat_z, parse_value=datetime.fromisoformat)


# -- the same GraphQL types as the project (gql_api/graphql/types.py) ----------------------


@strawberry.enum
class MessageKind(Enum):
    TEXT = "TEXT"
    SUPERLIKE = "SUPERLIKE"


@strawberry.type
class PhotoVariant:
    size: str
    url: str


@strawberry.type
class ProfilePhoto:
    id: strawberry.ID
    url: str
    type: str
    variants: list[PhotoVariant]
    created_at: datetime
    updated_at: datetime


@strawberry.type
class User:
    id: strawberry.ID
    username: str
    name: str
    surname: str
    profile_photo: ProfilePhoto | None
    availability_status: str


@strawberry.type
class ChatMessage:
    id: strawberry.ID
    stream_id: strawberry.ID
    kind: MessageKind
    content: str
    sender: User
    created_at: datetime
    updated_at: datetime
    client_message_id: str | None
    cursor: str


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class ChatMessageEdge:
    cursor: str
    node: ChatMessage


@strawberry.type
class ChatMessageConnection:
    edges: list[ChatMessageEdge]
    page_info: PageInfo


# -- in-memory state: users, streams, and one queue per subscriber --------------------------


class State:
    def __init__(self, secret: str, users: dict[str, dict[str, str]], stream_id: str) -> None:
        self.secret = secret
        self.users = {
            user_id: User(
                id=strawberry.ID(user_id),
                username=profile["username"],
                name=profile["name"],
                surname=profile["surname"],
                profile_photo=None,
                availability_status="available",
            )
            for user_id, profile in users.items()
        }
        self.seq: dict[str, int] = {stream_id: 0}
        self.history: dict[str, deque[ChatMessage]] = {stream_id: deque(maxlen=HISTORY_LIMIT)}
        self.subscribers: dict[str, set[asyncio.Queue[ChatMessage]]] = defaultdict(set)

    def authenticate(self, header: Any) -> User:
        if not isinstance(header, str) or not header:
            raise PermissionError("Authentication required")
        token = header.removeprefix("Bearer ").strip()
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"], options={"require": ["sub", "exp", "iat"]})
        except jwt.PyJWTError as exc:
            raise PermissionError("Authentication required: the token is not valid") from exc
        user = self.users.get(claims["sub"])
        if user is None:
            raise PermissionError("Authentication required: the token's user does not exist")
        return user


STATE: State


def _caller(info: Info) -> User:
    context = info.context
    user = context.get("user")
    if user is None:
        user = STATE.authenticate(context["request"].headers.get("authorization"))
    return user


@strawberry.type
class Query:
    @strawberry.field
    def chat_messages(self, info: Info, stream_id: strawberry.ID, last: int = 50) -> ChatMessageConnection:
        _caller(info)
        messages = list(STATE.history.get(str(stream_id), ()))[-last:]
        edges = [ChatMessageEdge(cursor=m.cursor, node=m) for m in messages]
        return ChatMessageConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=False,
                has_previous_page=len(STATE.history.get(str(stream_id), ())) > len(edges),
                start_cursor=edges[0].cursor if edges else None,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def send_chat_message(
        self, info: Info, stream_id: strawberry.ID, content: str, client_message_id: str | None = None
    ) -> ChatMessage:
        sender = _caller(info)
        stream = str(stream_id)
        if stream not in STATE.seq:
            raise ValueError("Resource not found: no live stream has this id")
        content = content.strip()
        if not 1 <= len(content) <= 500:
            raise ValueError("Validation failed: `content` must be 1 to 500 characters after trimming")
        STATE.seq[stream] += 1
        now = utcnow()
        message = ChatMessage(
            id=strawberry.ID(str(ObjectId())),
            stream_id=strawberry.ID(stream),
            kind=MessageKind.TEXT,
            content=content,
            sender=sender,
            created_at=now,
            updated_at=now,
            client_message_id=client_message_id,
            cursor=encode_cursor(STATE.seq[stream]),
        )
        STATE.history[stream].append(message)
        for queue in STATE.subscribers[stream]:
            queue.put_nowait(message)
        return message


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def message_added(self, info: Info, stream_id: strawberry.ID) -> AsyncGenerator[ChatMessage, None]:
        _caller(info)
        queue: asyncio.Queue[ChatMessage] = asyncio.Queue()
        subscribers = STATE.subscribers[str(stream_id)]
        subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            subscribers.discard(queue)


class BaselineGraphQL(GraphQL):
    """Authentication in ``on_ws_connect``, as Strawberry's documentation shows."""

    async def on_ws_connect(self, context: dict[str, Any]) -> None:
        params = context.get("connection_params")
        header = None
        if isinstance(params, dict):
            header = next((v for k, v in params.items() if k.lower() == "authorization"), None)
        try:
            context["user"] = STATE.authenticate(header)
        except PermissionError as exc:
            raise ConnectionRejectionError({"message": str(exc)}) from exc


def build_app() -> Starlette:
    schema = strawberry.Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map={datetime: DATETIME}),
    )
    graphql_app = BaselineGraphQL(schema)
    return Starlette(routes=[Route("/graphql", graphql_app), WebSocketRoute("/graphql", graphql_app)])


def main() -> None:
    global STATE
    parser = argparse.ArgumentParser(description="The benchmark's plain-Strawberry baseline server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    STATE = State(
        os.environ["BENCH_JWT_SECRET"],
        json.loads(Path(os.environ["BENCH_USERS_FILE"]).read_text()),
        os.environ["BENCH_STREAM_ID"],
    )
    # The same uvicorn settings as `gql-api serve`.
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="info", lifespan="on")


if __name__ == "__main__":
    main()
