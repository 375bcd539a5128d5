"""Shared fixtures: a real MongoDB wire-protocol server, the real app over real HTTP, small factories.

The database is the embedded nx-27017 server, or the MongoDB in ``MONGODB_URI`` when set.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gql_api.app import App, create_app
from gql_api.documents import LiveStream, User
from gql_api.embedded import EmbeddedMongo
from gql_api.service import ChatService
from gql_api.settings import Settings
from gql_api.state import Services
from gql_api.users import create_user

TEST_SECRET = "test-secret-" + "x" * 64


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_error_logs: the test provokes ERROR logs on purpose")
    config.addinivalue_line("markers", "slow: starts processes, restarts a database or fuzzes (-m 'not slow' skips)")


@pytest.fixture(autouse=True)
def no_error_logs(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test during which the service logged an ERROR: a self-healing path must not hide a bug."""
    yield
    if request.node.get_closest_marker("allow_error_logs"):
        return
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR and r.name.startswith("gql_api")]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running MongoDB wire-protocol server for the whole session."""
    if uri := os.environ.get("MONGODB_URI"):
        yield uri
        return
    embedded = EmbeddedMongo(tmp_path_factory.mktemp("embedded"))
    uri = embedded.start()
    yield uri
    embedded.stop()


@pytest.fixture(scope="session")
def make_settings(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Settings]:
    """Settings for a test app on the session's database; keyword arguments override fields."""
    database = f"gql_api_test_{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path_factory.mktemp("data")

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "mongodb_uri": SecretStr(mongo_uri),
            "mongodb_db": database,
            "gql_api_data_dir": data_dir,
            "jwt_secret": SecretStr(TEST_SECRET),
            # The 5 s defaults are not under test here (test_faults sets its own): on a loaded
            # machine a starved database answered 200 concurrent sign-ins later than that.
            "mongodb_operation_timeout_ms": 60_000,
            "mongodb_server_selection_timeout_ms": 60_000,
            # Nor is the 3 s connection_init timeout, which a starved event loop can exceed.
            "ws_connection_init_timeout_seconds": 60.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@dataclass
class LiveServer:
    """An app served by uvicorn on a loopback port, in the test's event loop, and the services
    its lifespan built."""

    app: App
    services: Services
    url: str
    ws_url: str

    @property
    def chat(self) -> ChatService:
        return self.services.chat

    def token(self, user: User, **kwargs: Any) -> str:
        return self.services.authenticator.issue(str(user.id), **kwargs)


class _WatchedLifespan:
    """The app as it is, with a view of its lifespan: set ``started`` once its startup is over
    (complete or failed) and keep the lifespan state it filled in."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.started = asyncio.Event()
        self.state: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        self.state = scope["state"]

        async def watched_send(message: Message) -> None:
            await send(message)
            if message["type"] in {"lifespan.startup.complete", "lifespan.startup.failed"}:
                self.started.set()

        await self.app(scope, receive, watched_send)


@asynccontextmanager
async def serve(
    app: App,
    *,
    send_buffer: int | None = None,
    config: Callable[[ASGIApp, int], uvicorn.Config] | None = None,
    **uvicorn_options: Any,
) -> AsyncIterator[LiveServer]:
    """Serve ``app`` with uvicorn on a free loopback port until the block ends.

    The block starts once the app's lifespan has started (a startup that fails raises instead
    of hanging); the socket listens before uvicorn starts, so nothing has to poll for the port.
    ``send_buffer`` fixes the kernel's send buffer of every accepted connection (they inherit
    it), so a client that stops reading backs the server up after kilobytes rather than
    megabytes. ``config``: uvicorn's configuration built by the caller from the app and the
    port (``gql-api serve``'s own, say).
    """
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it every response waits ~40 ms on Nagle's algorithm and delayed ACKs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    host, port = sock.getsockname()
    watched = _WatchedLifespan(app)
    if config is None:
        server = uvicorn.Server(uvicorn.Config(watched, lifespan="on", log_level="warning", **uvicorn_options))
    else:
        server = uvicorn.Server(config(watched, port))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        waiter = asyncio.create_task(watched.started.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if "services" not in watched.state:
            raise RuntimeError("the app failed to start")
        services: Services = watched.state["services"]
        yield LiveServer(app=app, services=services, url=f"http://{host}:{port}", ws_url=f"ws://{host}:{port}/graphql")
    finally:
        server.should_exit = True
        await task
        sock.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
async def server(make_settings: Callable[..., Settings]) -> AsyncIterator[LiveServer]:
    """The development app on the session's database."""
    async with serve(create_app(make_settings())) as live:
        yield live


@pytest.fixture
async def http(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


_usernames = itertools.count(1)


@pytest.fixture
def make_user(server: LiveServer) -> Callable[..., Awaitable[User]]:
    """Create a user with a unique username."""

    async def make(**kwargs: Any) -> User:
        username = kwargs.pop("username", None) or f"user{next(_usernames)}_{uuid.uuid4().hex[:6]}"
        kwargs.setdefault("photo_url", f"https://img.example/{username}.webp")
        return await create_user(server.chat.store, username, **kwargs)

    return make


@pytest.fixture
def make_stream(server: LiveServer, make_user: Callable[..., Awaitable[User]]) -> Callable[..., Awaitable[LiveStream]]:
    """Create a LIVE stream (owned by a new user unless ``owner`` is given)."""

    async def make(owner: User | None = None, title: str = "A stream") -> LiveStream:
        return await server.chat.create_stream(owner or await make_user(), title)

    return make


@dataclass
class GraphQLClient:
    """POSTs GraphQL operations to the live server as one user."""

    http: httpx.AsyncClient
    token: str | None

    async def execute(self, query: str, variables: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
        if self.token is not None:
            headers.setdefault("Authorization", self.token)
        response = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The data of an operation that must succeed."""
        body = await self.execute(query, variables)
        assert "errors" not in body, body["errors"]
        return body["data"]

    async def error(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The one error of an operation that must fail."""
        body = await self.execute(query, variables)
        assert body.get("errors"), body
        assert len(body["errors"]) == 1, body["errors"]
        return body["errors"][0]


@pytest.fixture
def client_for(server: LiveServer, http: httpx.AsyncClient) -> Callable[[User | None], GraphQLClient]:
    """A GraphQL client authenticated as ``user`` (anonymous for None)."""

    def make(user: User | None) -> GraphQLClient:
        return GraphQLClient(http, server.token(user) if user is not None else None)

    return make


@dataclass
class ApiProcess:
    """A ``gql-api serve`` process: another replica, with its own memory and event loop."""

    process: asyncio.subprocess.Process
    url: str
    ws_url: str
    output: list[str]


@asynccontextmanager
async def api_process(data_dir: Path, *, workers: int = 1, **env: str | None) -> AsyncIterator[ApiProcess]:
    """Run ``gql-api serve`` on a free port with this data dir until the block ends.

    ``env`` adds variables (None unsets one). Without ``MONGODB_URI`` it uses (or starts) the
    data dir's embedded server. Yields once uvicorn is serving (with ``workers`` > 1, once every
    worker has started); its log is kept in ``output``.
    """
    port = free_port()
    extra = ["--workers", str(workers)] if workers > 1 else []
    environment = {k: v for k, v in os.environ.items() if k not in {"MONGODB_URI", "JWT_SECRET", "APP_ENV"}}
    environment["GQL_API_DATA_DIR"] = str(data_dir)
    environment.update(env)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gql_api",
        "serve",
        "--port",
        str(port),
        *extra,
        env={name: value for name, value in environment.items() if value is not None},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output: list[str] = []
    serving = asyncio.Event()

    async def drain() -> None:
        # Read to the end, or a full pipe would block the server's logging.
        started = 0
        async for raw in process.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace").rstrip()
            output.append(line)
            started += "Application startup complete" in line
            if ("Uvicorn running" in line) if workers == 1 else started == workers:
                serving.set()
        serving.set()

    reader = asyncio.create_task(drain())
    try:
        await asyncio.wait_for(serving.wait(), 60)
        assert process.returncode is None, "\n".join(output)
        yield ApiProcess(process, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/graphql", output)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 30)
        await reader
