"""The servers under test: how each is started, seeded and reached."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from bson import ObjectId

from bench.clients import Http
from bench.config import Config
from bench.processes import BENCH_DIR, ROOT, ServerProcess, base_env, free_port, log


@dataclass
class Target:
    """A running server under test and how to reach it."""

    name: str
    server: ServerProcess
    host: str
    port: int
    tokens: list[str]
    stream_id: str
    db_pid: int | None = None
    mongo_uri: str | None = None
    mongo_db: str | None = None
    history_streams: dict[int, str] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/graphql"

    def http(self, user: int = 0) -> Http:
        return Http(self.host, self.port, self.tokens[user % len(self.tokens)])

    def next_token(self) -> str:
        """Senders take turns, so no user comes near the project's per-user rate limit."""
        self._turn = getattr(self, "_turn", -1) + 1
        return self.tokens[self._turn % len(self.tokens)]


def user_profile(user_id: str, username: str, name: str, surname: str) -> dict[str, Any]:
    """A user as embedded in stored documents (``sender``, ``owner``)."""
    return {
        "id": user_id,
        "username": username,
        "name": name,
        "surname": surname,
        "profile_photo": None,
        "availability_status": "available",
    }


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def message_document(stream_id: str, seq: int, sender: dict[str, Any], content: str) -> dict[str, Any]:
    """A stored ChatMessage document, as the project writes it."""
    now = _now()
    return {
        "stream_id": stream_id,
        "seq": seq,
        "kind": "TEXT",
        "content": content,
        "sender": sender,
        "client_message_id": None,
        "dedup_key": f"r:{ObjectId()}",
        "created_at": now,
        "updated_at": now,
    }


async def seed(uri: str, db_name: str, sizes: list[int], users: int) -> tuple[dict[int, str], list[str]]:
    """Create ``users`` users, and one LIVE stream per size with that many messages (seq 1..N)
    by raw inserts; return the streams by size and the user ids."""
    from beanie import init_beanie
    from pymongo import AsyncMongoClient

    from gql_api.documents import DOCUMENT_MODELS, ChatMessage, LiveStream, User

    client: AsyncMongoClient = AsyncMongoClient(uri, tz_aware=True)
    streams: dict[int, str] = {}
    try:
        database = client[db_name]
        await init_beanie(database=database, document_models=DOCUMENT_MODELS)  # the indexes
        pool = [User(username=f"bench{i:04d}", name="Bench", surname=f"Viewer{i}") for i in range(users)]
        user_ids = [str(i) for i in (await User.insert_many(pool)).inserted_ids]
        owner = user_profile(str(ObjectId()), "bench-owner", "Bench", "Owner")
        sender = user_profile(str(ObjectId()), "bench-history", "Bench", "History")
        for size in sizes:
            stream_id = ObjectId()
            started = time.perf_counter()
            await database[LiveStream.Settings.name].insert_one(
                {
                    "_id": stream_id,
                    "title": f"bench history {size}",
                    "owner": owner,
                    "status": "LIVE",
                    "superlike_count": 0,
                    "last_seq": size,
                    "created_at": _now(),
                    "ended_at": None,
                }
            )
            for first in range(1, size + 1, 5000):
                await database[ChatMessage.Settings.name].insert_many(
                    [
                        message_document(str(stream_id), seq, sender, f"history {seq}")
                        for seq in range(first, min(size, first + 4999) + 1)
                    ]
                )
            streams[size] = str(stream_id)
            log(f"  seeded a stream with {size} messages ({time.perf_counter() - started:.1f}s)")
    finally:
        await client.close()
    if len(user_ids) != users:
        raise RuntimeError(f"seeded {users} users but found {len(user_ids)}")
    return streams, user_ids


async def start_project(config: Config, workdir: Path) -> tuple[Target, Callable[[], None]]:
    """``gql-api serve`` on a fresh embedded database, seeded with users and history."""
    from gql_api.embedded import EmbeddedMongo

    data_dir = workdir / "project"
    data_dir.mkdir()
    embedded = EmbeddedMongo(data_dir)
    uri = await asyncio.to_thread(embedded.start)
    server: ServerProcess | None = None

    def stop() -> None:
        if server is not None:
            server.stop()
        embedded.stop()

    try:
        history, user_ids = await seed(uri, "gql_api", config.history, config.users)
        secret = secrets.token_urlsafe(48)
        env = {**base_env(), "GQL_API_DATA_DIR": str(data_dir), "MONGODB_DB": "gql_api", "JWT_SECRET": secret}
        if config.ws_compression:
            env["WS_COMPRESSION"] = "on"
        port = free_port()
        command = [sys.executable, "-m", "gql_api", "serve", "--port", str(port)]
        if config.workers > 1:  # ready once every worker has started
            command += ["--workers", str(config.workers)]
            ready = ("Application startup complete", config.workers)
        else:
            ready = ("Uvicorn running on", 1)
        server = ServerProcess("project", command, env, workdir / "project.log", *ready)
        await server.start()
        demo = subprocess.run(
            [sys.executable, "-m", "gql_api", "demo", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        data = json.loads(demo.stdout)
        tokens = make_tokens(secret, user_ids)
        db_pid = int((data_dir / "nx-27017.pid").read_text())
        target = Target(
            "project",
            server,
            "127.0.0.1",
            port,
            tokens,
            data["streamId"],
            db_pid=db_pid,
            mongo_uri=uri,
            mongo_db="gql_api",
            history_streams=history,
        )
        return target, stop
    except BaseException:
        stop()
        raise


def make_tokens(secret: str, user_ids: list[str]) -> list[str]:
    """HS256 tokens as ``gql-api token`` issues them (sub, iat, exp), valid for the run."""
    now = datetime.now(UTC)
    claims = {"iat": now, "exp": now + timedelta(hours=2)}
    return [jwt.encode({"sub": uid, **claims}, secret, algorithm="HS256") for uid in user_ids]


NODE_PEER_DIR = BENCH_DIR / "node_peer"


def node_unavailable() -> str | None:
    """Why the Node.js peer cannot run here (no ``node``, or no ``npm`` to install its packages),
    or None when it can."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not (NODE_PEER_DIR / "node_modules").is_dir() and shutil.which("npm") is None:
        return "its packages are not installed and npm is not on PATH"
    return None


async def _start_in_memory(
    name: str, argv: list[str], ready: str, config: Config, workdir: Path
) -> tuple[Target, Callable[[], None]]:
    """Start a server that keeps users and messages in memory (the baseline, the Node.js peer):
    the users go to it in a file, the secret and the one stream in its environment."""
    secret = secrets.token_urlsafe(48)
    profiles = {
        str(ObjectId()): {"username": f"bench{i:04d}", "name": "Bench", "surname": f"Viewer{i}"}
        for i in range(config.users)
    }
    users_file = workdir / f"{name}-users.json"
    users_file.write_text(json.dumps(profiles))
    tokens = make_tokens(secret, list(profiles))
    stream_id = str(ObjectId())
    env = {**base_env(), "BENCH_JWT_SECRET": secret, "BENCH_USERS_FILE": str(users_file), "BENCH_STREAM_ID": stream_id}
    port = free_port()
    server = ServerProcess(name, [*argv, "--port", str(port)], env, workdir / f"{name}.log", ready=ready)
    await server.start()
    return Target(name, server, "127.0.0.1", port, tokens, stream_id), server.stop


async def start_baseline(config: Config, workdir: Path) -> tuple[Target, Callable[[], None]]:
    """The plain-Strawberry baseline (bench/baseline.py) under uvicorn."""
    return await _start_in_memory(
        "baseline", [sys.executable, str(BENCH_DIR / "baseline.py")], "Uvicorn running on", config, workdir
    )


async def start_node(config: Config, workdir: Path) -> tuple[Target, Callable[[], None]]:
    """The Node.js peer (bench/node_peer/server.js); installs its locked packages on first use."""
    reason = node_unavailable()
    if reason is not None:
        raise RuntimeError(f"the Node.js peer cannot run: {reason}")
    if not (NODE_PEER_DIR / "node_modules").is_dir():
        log("  installing the Node.js peer's packages (npm ci, from bench/node_peer/package-lock.json)")
        await asyncio.to_thread(
            subprocess.run,
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_PEER_DIR,
            capture_output=True,
            check=True,
            timeout=600,
        )
    node = shutil.which("node")
    assert node is not None
    return await _start_in_memory(
        "node", [node, str(NODE_PEER_DIR / "server.js")], "Node peer listening on", config, workdir
    )


STARTERS: dict[str, Callable[[Config, Path], Awaitable[tuple[Target, Callable[[], None]]]]] = {
    "project": start_project,
    "baseline": start_baseline,
    "node": start_node,
}
