"""The app's services: built once by its lifespan on the open database, complete, and nowhere else."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import uvicorn

from gql_api.app import create_app
from gql_api.delivery import ChangeStreamDelivery
from gql_api.metrics import Metrics
from gql_api.state import open_services
from tests.conftest import serve


async def test_the_running_app_is_wired_once_around_its_delivery(server):
    services = server.services

    # The embedded server has change streams: the delivery the lifespan opened is the one
    # every write goes through, from the first request on.
    assert isinstance(services.delivery, ChangeStreamDelivery)
    assert services.chat.delivery is services.delivery
    assert services.delivery.hub is services.hub is services.chat.hub
    assert services.chat.rate_limiter is services.rate_limiter
    assert services.metrics is server.app.metrics is services.hub.metrics
    assert services.settings is server.app.settings


async def test_apps_sharing_a_database_have_services_of_their_own(server, make_settings):
    async with serve(create_app(make_settings(), database=server.services.database)) as other:
        assert other.services.database is server.services.database
        assert other.services.hub is not server.services.hub
        assert other.services.delivery is not server.services.delivery
        assert isinstance(other.services.delivery, ChangeStreamDelivery)
    # Leaving the database it was given open, for the app that opened it.
    assert (await server.services.database.command("ping"))["ok"] == 1


def _feeds() -> set[asyncio.Task]:
    return {task for task in asyncio.all_tasks() if task.get_name().startswith("feed:")}


async def test_open_services_stops_delivery_and_leaves_a_given_database_open(server, make_settings):
    before = _feeds()
    async with open_services(make_settings(), Metrics(), database=server.services.database) as services:
        assert isinstance(services.delivery, ChangeStreamDelivery)
        await asyncio.wait_for(services.delivery.connected.wait(), 10)
        followers = _feeds() - before
        assert followers  # its change-stream followers

    assert all(task.done() for task in followers)
    assert (await server.services.database.command("ping"))["ok"] == 1


@pytest.mark.allow_error_logs
async def test_an_app_served_without_its_lifespan_is_not_ready_and_serves_nothing(server, make_settings, caplog):
    """Without its lifespan there is no database and no delivery: no request may run half-wired."""
    app = create_app(make_settings(), database=server.services.database)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    host, port = sock.getsockname()
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="critical"))
    task = asyncio.create_task(uvicorn_server.serve(sockets=[sock]))
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as http:
            ready = await http.get("/readyz")
            rest = await http.get("/api/v1/live-stream/64d15f9e2e6c8f4d5a123000/chat/messages")
            graphql = await http.post("/graphql", json={"query": "{ __typename }"})
    finally:
        uvicorn_server.should_exit = True
        await task
        sock.close()

    assert (ready.status_code, ready.json()) == (503, {"status": "unavailable"})
    assert rest.status_code == 500 and rest.json()["errors"] == ["Internal server error"]
    assert graphql.status_code == 500
    errors = [r.exc_info[1] for r in caplog.records if r.name.startswith("gql_api") and r.exc_info]
    assert errors and all("lifespan has not run" in str(error) for error in errors)
