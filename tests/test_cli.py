"""The ``gql-api`` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from gql_api.app import create_app
from gql_api.cli import WebSocketProtocol, schema_sdl, uvicorn_config
from gql_api.pagination import decode_cursor, encode_cursor
from tests.conftest import ApiProcess, api_process, serve

ROOT = Path(__file__).resolve().parent.parent


def _env(data_dir: Path, mongo_uri: str | None, database: str = "cli_test") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MONGODB_URI", "JWT_SECRET", "APP_ENV"}}
    env.update({"GQL_API_DATA_DIR": str(data_dir), "MONGODB_DB": database})
    if mongo_uri is not None:
        env["MONGODB_URI"] = mongo_uri
    return env


def gql_api(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "gql_api", *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_the_checked_in_schema_is_the_running_schema():
    assert (ROOT / "schema.graphql").read_text() == schema_sdl()


@pytest.mark.slow
def test_export_schema_writes_the_schema(tmp_path, mongo_uri):
    gql_api("export-schema", "--output", str(tmp_path / "s.graphql"), env=_env(tmp_path, mongo_uri))
    assert (tmp_path / "s.graphql").read_text() == schema_sdl()


@pytest.mark.slow
def test_demo_is_idempotent_and_its_tokens_work(tmp_path, mongo_uri):
    env = _env(tmp_path, mongo_uri, database="cli_demo")
    first = json.loads(gql_api("demo", "--json", env=env).stdout)
    second = json.loads(gql_api("demo", "--json", env=env).stdout)

    assert first["streamId"] == second["streamId"]
    assert set(first["users"]) == {"alice", "bob", "carol"}
    assert {u: d["id"] for u, d in first["users"].items()} == {u: d["id"] for u, d in second["users"].items()}
    assert all(d["token"].count(".") == 2 for d in first["users"].values())


@pytest.mark.slow
def test_user_create_and_token(tmp_path, mongo_uri):
    env = _env(tmp_path, mongo_uri, database="cli_users")
    created = json.loads(gql_api("user", "create", "JohnDoe", "--name", "John", "--surname", "Doe", env=env).stdout)
    taken = gql_api("user", "create", "johndoe", env=env, check=False)
    token = gql_api("token", "johndoe", "--ttl", "60", env=env).stdout.strip()
    unknown = gql_api("token", "nobody", env=env, check=False)

    assert created["username"] == "johndoe"
    assert taken.returncode == 2 and "taken" in taken.stderr
    assert token.count(".") == 2
    assert unknown.returncode == 2 and "no user" in unknown.stderr


@pytest.mark.slow
def test_production_refuses_to_start_without_a_secret(tmp_path):
    env = _env(tmp_path, "mongodb://127.0.0.1:1") | {"APP_ENV": "production"}
    result = gql_api("serve", env=env, check=False)
    assert result.returncode == 2
    assert "JWT_SECRET" in result.stderr and "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_on_the_embedded_database_from_scratch(tmp_path):
    """The README's first command: no MongoDB anywhere, an empty data dir, a banner with a token."""
    port = _free_port()
    env = _env(tmp_path / "fresh", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gql_api", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = {}
        assert process.stdout is not None
        for line in process.stdout:
            key, _, value = line.strip().partition(":")
            banner[key.strip()] = value.strip()
            if line.startswith("INFO:") and "Uvicorn running" in line:
                break
        token, stream_id = banner["Token (alice)"], banner["Demo stream"]
        send = 'mutation($s: ID!) { sendChatMessage(streamId: $s, content: "hello") { content } }'
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            page = client.get("/graphql", headers={"Accept": "text/html"})
            sent = client.post(
                "/graphql", json={"query": send, "variables": {"s": stream_id}}, headers={"Authorization": token}
            )
        assert page.status_code == 200
        assert sent.json() == {"data": {"sendChatMessage": {"content": "hello"}}}
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert "Traceback" not in output
    assert not (tmp_path / "fresh" / "mongodb.uri").exists()  # the embedded server was stopped


def test_serve_caps_websocket_messages_in_uvicorn_too(make_settings):
    settings = make_settings(graphql_max_body_bytes=4096)
    config = uvicorn_config(object(), settings, host="127.0.0.1", port=0)
    assert config.ws_max_size == 4096


@pytest.mark.parametrize(("ws_compression", "negotiated"), [(False, None), (True, "permessage-deflate")])
async def test_websocket_compression_is_negotiated_only_when_turned_on(
    server, make_settings, ws_compression, negotiated
):
    """Browsers always offer permessage-deflate: uvicorn, as ``gql-api serve`` configures it,
    accepts it only with WS_COMPRESSION on."""
    settings = make_settings(ws_compression=ws_compression)
    # The session's database: Beanie's binding is process-wide, and must outlive this app.
    app = create_app(settings, database=server.services.database)

    def config(app: Any, port: int) -> Any:
        return uvicorn_config(app, settings, host="127.0.0.1", port=port)

    async with serve(app, config=config) as live:
        # What a browser sends: permessage-deflate, with client_max_window_bits.
        async with websockets.connect(
            live.ws_url, subprotocols=["graphql-transport-ws"], compression="deflate", ping_interval=None
        ) as ws:
            header = ws.response.headers.get("Sec-WebSocket-Extensions")
            in_use = [extension.name for extension in ws.protocol.extensions]
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            with pytest.raises(websockets.ConnectionClosed) as closed:  # the connection works either way
                await asyncio.wait_for(ws.recv(), 10)

    assert closed.value.rcvd.code == 4403
    if negotiated is None:
        assert header is None and in_use == []
    else:
        assert header is not None and header.startswith(negotiated)
        assert in_use == [negotiated]


async def test_served_websockets_forget_the_handshake_once_accepted(server, make_settings, make_user):
    # uvicorn kept each connection's handshake response, headers parsed, for the connection's
    # life: about 1.5 KiB of every idle subscription.
    settings = make_settings()
    app = create_app(settings, database=server.services.database)

    def config(app: Any, port: int) -> Any:
        return uvicorn_config(app, settings, host="127.0.0.1", port=port)

    token = server.token(await make_user())
    async with serve(app, config=config) as live:
        async with websockets.connect(live.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
            ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
            protocols = [o for o in gc.get_objects() if type(o) is WebSocketProtocol and not o.disconnected]
            await ws.send(json.dumps({"type": "ping"}))  # the connection still works both ways
            pong = json.loads(await asyncio.wait_for(ws.recv(), 10))

    assert ack["type"] == "connection_ack" and pong == {"type": "pong"}
    assert len(protocols) == 1
    assert protocols[0].request is None and protocols[0].response is None


SEND = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id cursor } }"
MESSAGE_ADDED = "subscription($s: ID!, $after: String) { messageAdded(streamId: $s, after: $after) { id content } }"


def _banner(api: ApiProcess) -> dict[str, str]:
    return {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in api.output if line.startswith("  "))
    }


async def _alone(worker: int, paused: int, work: Any) -> Any:
    """Run ``work`` while the other worker is stopped, so that only ``worker`` accepts connections."""
    os.kill(paused, signal.SIGSTOP)
    try:
        return await work
    finally:
        os.kill(paused, signal.SIGCONT)


@pytest.mark.slow
async def test_serve_with_workers_runs_replicas_that_deliver_to_each_other(tmp_path):
    """``serve --workers 2``: one embedded database and one banner for both workers, both answer,
    a message sent through one reaches a subscriber on the other, and Ctrl-C stops every process."""
    data_dir = tmp_path / "data"
    async with api_process(data_dir, workers=2) as api:
        log = "\n".join(api.output)
        first, second = workers = [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", log)]
        banner = _banner(api)
        token, stream = banner["Token (alice)"], banner["Demo stream"]
        database_pid = int((data_dir / "nx-27017.pid").read_text())

        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:

            async def send(content: str) -> dict[str, Any]:
                body = {"query": SEND, "variables": {"s": stream, "c": content}}
                response = await http.post("/graphql", json=body, headers={"Authorization": token})
                return response.json()["data"]["sendChatMessage"]

            marker = await _alone(second, first, send("marker"))
            ws = await _alone(
                first, second, websockets.connect(api.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None)
            )
            async with ws:
                await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "connection_ack"
                after = encode_cursor(decode_cursor(marker["cursor"]) - 1)
                variables = {"s": stream, "after": after}
                await ws.send(
                    json.dumps(
                        {"id": "1", "type": "subscribe", "payload": {"query": MESSAGE_ADDED, "variables": variables}}
                    )
                )
                # The marker is replayed from history: the subscription is live from here on.
                replayed = json.loads(await asyncio.wait_for(ws.recv(), 30))
                sent = await _alone(second, first, send("hello from the other worker"))
                live = json.loads(await asyncio.wait_for(ws.recv(), 30))
            subscriber_port = ws.local_address[1]

    log = "\n".join(api.output)
    assert api.process.returncode == 0, log
    assert "Traceback" not in log, log
    # One embedded database and one banner (the parent's), two workers reusing that database.
    assert log.count("Started the embedded MongoDB server") == 1
    assert sorted(re.findall(r"\[(\d+)\] gql_api.embedded: Reusing the embedded", log)) == sorted(map(str, workers))
    assert log.count("Token (alice)") == 1
    # Each request was answered by the worker that was running: two distinct processes.
    assert first != second
    assert re.findall(r"\[(\d+)\] [\d.]+:\d+ - \"POST /graphql HTTP/1.1\" 200", log) == [str(second)] * 2
    assert re.findall(rf"\[(\d+)\] [\d.]+:{subscriber_port} - \"WebSocket /graphql\" \[accepted\]", log) == [str(first)]
    assert replayed["payload"]["data"]["messageAdded"]["id"] == marker["id"]
    assert live["payload"]["data"]["messageAdded"] == {"id": sent["id"], "content": "hello from the other worker"}
    # Ctrl-C stopped the workers and the embedded database too.
    for pid in [*workers, database_pid]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (data_dir / "mongodb.uri").exists()


def test_serve_refuses_fewer_than_one_worker(tmp_path):
    result = gql_api("serve", "--workers", "0", env=_env(tmp_path, None), check=False)
    assert result.returncode == 2 and "at least 1" in result.stderr
