"""A dying database: operations fail fast with SERVICE_UNAVAILABLE, and the process recovers.

The API runs as its own ``gql-api serve`` process on its own embedded server, which the test
kills and restarts on the same port. In-process it could not: Beanie binds its documents
globally, so a second app's lifespan would re-bind them away from the session's app (and leave
them on a closed client at exit), and the session's database must never stop.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from gql_api.embedded import EmbeddedMongo
from tests.conftest import TEST_SECRET, api_process

SEND = """
mutation($s: ID!, $c: String!, $id: String) {
  sendChatMessage(streamId: $s, content: $c, clientMessageId: $id) { id content }
}
"""
HISTORY = "query($s: ID!) { chatMessages(streamId: $s) { edges { node { content } } } }"
ME = "{ me { username } }"


async def _demo(env: dict[str, str | None]) -> dict:
    """``gql-api demo --json``, reusing the running embedded server."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gql_api",
        "demo",
        "--json",
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return json.loads(out)


def _signal_and_wait(pid: int, signum: signal.Signals) -> None:
    """Signal a process that is not our child; for SIGKILL, wait until it has exited."""
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signum)
        if signum is signal.SIGKILL:
            readable, _, _ = select.select([pidfd], [], [], 10)  # readable once it has exited
            assert readable, f"process {pid} did not exit"
    finally:
        os.close(pidfd)


async def _timed(http: httpx.AsyncClient, method: str, url: str, **kwargs) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await http.request(method, url, **kwargs)
    return response, time.perf_counter() - started


@pytest.mark.slow
async def test_an_outage_is_503_within_the_timeout_and_the_same_process_recovers(tmp_path: Path):
    data_dir = tmp_path / "data"
    env: dict[str, str | None] = {
        "GQL_API_DATA_DIR": str(data_dir),  # for `gql-api demo`
        "JWT_SECRET": TEST_SECRET,
        "MONGODB_URI": None,  # its own embedded server, never the session's database
        "MONGODB_DB": "faults",
        "MONGODB_SERVER_SELECTION_TIMEOUT_MS": "500",
        "MONGODB_OPERATION_TIMEOUT_MS": "500",
        "APP_ENV": "development",
    }
    restarted = EmbeddedMongo(data_dir)
    timings: dict[str, float] = {}
    try:
        async with api_process(data_dir, **env) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            demo = await _demo(env)
            stream_id = demo["streamId"]
            auth = {"Authorization": demo["users"]["alice"]["token"]}

            async def graphql(query: str, variables: dict | None = None) -> tuple[dict, float]:
                response, elapsed = await _timed(
                    http, "POST", "/graphql", json={"query": query, "variables": variables or {}}, headers=auth
                )
                assert response.status_code == 200, response.text
                return response.json(), elapsed

            async def assert_unavailable(phase: str) -> None:
                during = {"s": stream_id, "c": f"during {phase}", "id": f"c-{phase}"}
                send, timings[f"{phase}: send"] = await graphql(SEND, during)
                me, timings[f"{phase}: me"] = await graphql(ME)
                ready, timings[f"{phase}: readyz"] = await _timed(http, "GET", "/readyz")
                health = await http.get("/healthz")
                async with websockets.connect(
                    api.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None
                ) as ws:
                    await ws.send(json.dumps({"type": "connection_init", "payload": auth}))
                    try:
                        first, close_code = json.loads(await asyncio.wait_for(ws.recv(), 30))["type"], None
                    except websockets.ConnectionClosed as closed:
                        first, close_code = None, closed.rcvd.code if closed.rcvd is not None else None
                # Authentication could not reach the database: "try again later", not 4403; or
                # the user came from the cache, before its change stream saw the outage.
                assert close_code == 1013 or first == "connection_ack"

                unavailable = {"code": "SERVICE_UNAVAILABLE", "statusCode": 503}
                assert send["data"] is None and send["errors"][0]["extensions"] == unavailable
                # Authentication's user lookup is where both fail, unless the user cache (served
                # while its change stream is open) still had the user: 503, not 401 nor 500.
                if me["data"] != {"me": {"username": "alice"}}:
                    assert me["data"] is None and me["errors"][0]["extensions"] == unavailable
                    assert me["errors"][0]["message"] == "Service temporarily unavailable, try again"
                assert (ready.status_code, ready.json()) == (503, {"status": "unavailable"})
                assert (health.status_code, health.json()) == (200, {"status": "ok"})

            async def wait_until_ready(phase: str) -> None:
                # The driver finds the server again by itself; readiness is what a load
                # balancer polls for that, and each failed poll waits out the timeout.
                started = time.perf_counter()
                for _ in range(20):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                timings[f"{phase}: ready again"] = time.perf_counter() - started
                # The send that failed may have reached the database before it stopped
                # answering: its retry with the same clientMessageId stores it at most once.
                retry, _ = await graphql(SEND, {"s": stream_id, "c": f"during {phase}", "id": f"c-{phase}"})
                assert "errors" not in retry, retry["errors"]
                after, _ = await graphql(SEND, {"s": stream_id, "c": f"after {phase}"})
                assert "errors" not in after, after["errors"]

            before, _ = await graphql(SEND, {"s": stream_id, "c": "before"})
            assert "errors" not in before
            pid = int((data_dir / "nx-27017.pid").read_text())
            port = urlsplit((data_dir / "mongodb.uri").read_text().strip()).port

            # Frozen: connections stay open and nothing answers (the operation timeout's case).
            _signal_and_wait(pid, signal.SIGSTOP)
            try:
                await assert_unavailable("freeze")
            finally:
                _signal_and_wait(pid, signal.SIGCONT)
            await wait_until_ready("freeze")

            # Dead, then restarted on the same port with the same data.
            _signal_and_wait(pid, signal.SIGKILL)
            await assert_unavailable("kill")
            await asyncio.to_thread(restarted.start, port)
            await wait_until_ready("kill")

            history, _ = await graphql(HISTORY, {"s": stream_id})

        contents = [edge["node"]["content"] for edge in history["data"]["chatMessages"]["edges"]]
        assert contents[-5:] == ["before", "during freeze", "after freeze", "during kill", "after kill"]
        assert "Traceback" not in "\n".join(api.output)
        print(", ".join(f"{phase} {seconds:.2f}s" for phase, seconds in timings.items()))
    finally:
        await asyncio.to_thread(restarted.stop)
