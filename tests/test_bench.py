"""The benchmark's parts (bench/): its HTTP client on the real app, the Node.js peer as the
benchmark runs it, and the report's tables. The benchmark itself is run by hand (bench/README.md)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from bench.clients import Http, Load
from bench.config import QUICK, Config
from bench.report import report
from bench.scenarios import fanout
from bench.targets import node_unavailable, start_node
from tests.conftest import LiveServer


def _config(**changes: Any) -> Config:
    quick: dict[str, Any] = dict(QUICK)
    return replace(Config(**quick, targets=["project", "baseline", "node"], compression=True), **changes)


async def test_http_request_returns_the_status_and_the_body(server: LiveServer) -> None:
    url = urlsplit(server.url)
    assert url.hostname is not None and url.port is not None
    client = Http(url.hostname, url.port, "")
    try:
        assert await client.request("{ __typename }", {}) == (200, {"data": {"__typename": "Query"}})
        status, body = await client.request("{", {})  # the same keep-alive connection
        assert status == 200 and body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        status, body = await client.request("{ __typename }", {"padding": "x" * 70_000})  # over the cap
        assert status == 413 and body["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    finally:
        await client.close()


@pytest.mark.skipif(node_unavailable() is not None, reason=f"the Node.js peer cannot run: {node_unavailable()}")
async def test_node_peer_delivers_the_benchmark_subscription_over_permessage_deflate(tmp_path: Path) -> None:
    config = _config(users=3, targets=["node"])
    target, stop = await start_node(config, tmp_path)
    load = Load(target, config)
    try:
        await load.ensure(3)  # authenticated, subscribed and live: each got a marker message
        assert all(s.ws.protocol.extensions for s in load.subscribers)  # deflate was negotiated
        result = await fanout(load, 2)
        assert result["delivered"] == result["expected"] == 6
        assert not load.tracker.other_frames

        # A token that does not verify is refused in connection_init, as graphql-ws refuses.
        async with ws_connect(
            target.ws_url,
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            ping_interval=None,
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": "not a token"}}))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    finally:
        await load.close()
        stop()


def test_node_peer_is_reported_unavailable_without_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert node_unavailable() == "node is not on PATH"


def _fanout(deliveries_per_s: float) -> dict[str, Any]:
    return {"deliveries_per_s": deliveries_per_s, "p50_ms": 10.0, "p99_ms": 20.0, "expected": 5, "delivered": 5}


def test_report_has_a_set_of_tables_per_compression_mode_and_the_node_peer() -> None:
    info: dict[str, Any] = {
        "date": "today",
        "cpus": 2,
        "cpu": "cpu",
        "memory_gib": 1.0,
        "system": "Linux",
        "python": "3.11",
        "node": "20.0.0",
        "loadavg_at_start": (0.0, 0.0, 0.0),
        "skipped": {},
    }
    results: dict[str, dict[str, Any]] = {
        name: {"fanout_1000": _fanout(rate)}
        for name, rate in (("project", 8000.0), ("baseline", 2000.0), ("node", 4000.0))
    }
    text = report(info, [(_config(sizes=[1000]), results), (_config(sizes=[1000], compression=False), results)])
    assert "### Websocket compression: permessage-deflate" in text
    assert "### Websocket compression: off" in text
    row = next(line for line in text.splitlines() if line.startswith("| 1,000 |"))
    assert row == "| 1,000 | 8,000 | 10 | 20 | 2,000 | 10 | 20 | 4,000 | 10 | 20 | 4.0x | 2.0x | ratio >= 4: PASS |"


def test_report_says_which_peer_was_not_run() -> None:
    info: dict[str, Any] = {
        "date": "today",
        "cpus": 2,
        "cpu": "cpu",
        "memory_gib": 1.0,
        "system": "Linux",
        "python": "3.11",
        "loadavg_at_start": (0.0, 0.0, 0.0),
        "skipped": {"node": "node is not on PATH"},
    }
    results: dict[str, dict[str, Any]] = {name: {"fanout_1000": _fanout(1000.0)} for name in ("project", "baseline")}
    text = report(info, [(_config(sizes=[1000], compression=False), results)])
    assert "Not run: node (node is not on PATH)." in text
    assert "Websocket compression: off." in text
    assert "node deliveries/s" not in text
