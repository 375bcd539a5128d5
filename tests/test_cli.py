"""The ``gql-api`` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gql_api.cli import schema_sdl, uvicorn_config

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
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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
            sent = client.post("/graphql", json={"query": send, "variables": {"s": stream_id}}, headers={"Authorization": token})
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
