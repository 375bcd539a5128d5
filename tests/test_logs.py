"""Request ids on every response and log line, and JSON log lines (LOG_FORMAT=json)."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from gql_api.logs import log_handler
from tests.conftest import TEST_SECRET, LiveServer, api_process


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the package logs at INFO and above meanwhile, as ``LOG_FORMAT=json`` writes it."""
    stream = io.StringIO()
    handler = log_handler("json", stream)
    package = logging.getLogger("gql_api")
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


async def test_a_request_id_is_echoed_or_generated(http):
    given = await http.get("/healthz", headers={"X-Request-Id": "trace-42.a/b"})
    generated = [(await http.get("/healthz")).headers["X-Request-Id"] for _ in range(2)]
    # It ends up in log lines: anything with spaces, control characters or over 128 is replaced.
    odd = [
        (await http.get("/healthz", headers={"X-Request-Id": value})).headers["X-Request-Id"]
        for value in ("two words", "x" * 129, "")
    ]

    assert given.headers["X-Request-Id"] == "trace-42.a/b"
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in generated + odd)
    assert generated[0] != generated[1]
    refused = await http.post("/graphql", content=b"{", headers={"X-Request-Id": "on-errors-too"})
    assert refused.headers["X-Request-Id"] == "on-errors-too"


async def test_a_websocket_has_one_id_for_its_connection_and_its_log_lines_carry_it(server: LiveServer, json_lines):
    async with websockets.connect(
        server.ws_url,
        subprotocols=["graphql-transport-ws"],
        additional_headers={"X-Request-Id": "ws-connection-7"},
        ping_interval=None,
    ) as ws:
        assert ws.response.headers["X-Request-Id"] == "ws-connection-7"
        await ws.send(b"\x00binary")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()

    assert closed.value.rcvd.code == 4400
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    refusal = [line for line in lines if line["message"].startswith("Websocket closed with 4400")]
    assert refusal and refusal[0]["request_id"] == "ws-connection-7"
    assert refusal[0]["logger"] == "gql_api.graphql.websockets" and refusal[0]["level"] == "INFO"


def test_a_traceback_stays_inside_its_json_line():
    stream = io.StringIO()
    record = logging.LogRecord("gql_api.x", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record.exc_info = sys.exc_info()
    log_handler("json", stream).handle(record)

    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "failed here" and entry["request_id"] is None
    assert "ValueError: boom\nsecond line" in entry["exc_info"]


@pytest.mark.slow
async def test_gql_api_serve_writes_json_lines_with_the_request_id_it_echoed(tmp_path: Path, mongo_uri: str):
    env = {"LOG_FORMAT": "json", "MONGODB_URI": mongo_uri, "APP_ENV": "production", "JWT_SECRET": TEST_SECRET}
    async with api_process(tmp_path, **env) as api, httpx.AsyncClient(base_url=api.url) as client:
        response = await client.get("/healthz", headers={"X-Request-Id": "probe-1"})
        generated = (await client.get("/readyz")).headers["X-Request-Id"]

    assert response.headers["X-Request-Id"] == "probe-1"
    lines = [json.loads(line) for line in api.output if line.strip()]  # every line is JSON
    assert {"time", "level", "logger", "message", "request_id"} <= lines[0].keys()
    by_id = {line["request_id"]: line for line in lines if line["logger"] == "uvicorn.access"}
    assert "GET /healthz" in by_id["probe-1"]["message"]
    assert "GET /readyz" in by_id[generated]["message"]
    assert any("Uvicorn running" in line["message"] for line in lines)
