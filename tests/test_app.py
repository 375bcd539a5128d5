"""The app around the schema: health, readiness, GraphiQL, and what production turns off."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import CoroutineType
from typing import Any

import httpx
import pytest
import websockets

from gql_api.app import App, create_app
from gql_api.graphql.websockets import GraphQLTransportWSHandler
from tests.conftest import LiveServer, serve

INTROSPECTION = "{ __schema { queryType { name } } }"


@pytest.fixture(scope="module")
async def production(server, make_settings) -> AsyncIterator[LiveServer]:
    """A production app, on the session app's database."""
    app = create_app(make_settings(app_env="production"), database=server.services.database)
    async with serve(app) as live:
        yield live


async def test_health_and_readiness(http):
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_graphiql_is_served_in_development(http):
    response = await http.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


async def test_introspection_works_in_development(http):
    body = (await http.post("/graphql", json={"query": INTROSPECTION})).json()
    assert body == {"data": {"__schema": {"queryType": {"name": "Query"}}}}


async def test_production_turns_off_graphiql_introspection_and_suggestions(production):
    async with httpx.AsyncClient(base_url=production.url) as client:
        page = await client.get("/graphql", headers={"Accept": "text/html"})
        introspection = (await client.post("/graphql", json={"query": INTROSPECTION})).json()
        typename = (await client.post("/graphql", json={"query": "{ __typename }"})).json()
        typo = (await client.post("/graphql", json={"query": "{ mee { id } }"})).json()

    assert "graphiql" not in page.text.lower()
    assert introspection["data"] is None
    assert introspection["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert typename == {"data": {"__typename": "Query"}}
    assert "Did you mean" not in typo["errors"][0]["message"]
    assert typo["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


async def test_production_refuses_every_introspection_field_and_has_no_ide(production):
    async with httpx.AsyncClient(base_url=production.url) as client:
        page = await client.get("/graphql", headers={"Accept": "text/html"})
        type_query = (await client.post("/graphql", json={"query": '{ __type(name: "Query") { name } }'})).json()
        nested = (
            await client.post("/graphql", json={"query": "{ me { __typename } __schema { types { name } } }"})
        ).json()

    assert page.status_code == 404
    assert page.json()["errors"][0]["extensions"] == {"code": "NOT_FOUND", "statusCode": 404}
    assert type_query["data"] is None and "introspection" in type_query["errors"][0]["message"].lower()
    assert nested["data"] is None
    assert {e["extensions"]["code"] for e in nested["errors"]} == {"BAD_USER_INPUT"}


async def test_requests_refused_before_any_operation_get_a_graphql_error_body(http):
    put = await http.put("/graphql", json={"query": "{ __typename }"})
    garbled = await http.post("/graphql", content=b"{not json", headers={"Content-Type": "application/json"})

    assert put.status_code == 405
    assert put.json()["errors"][0]["extensions"] == {"code": "METHOD_NOT_ALLOWED", "statusCode": 405}
    assert garbled.status_code == 400
    assert garbled.json() == {
        "errors": [
            {
                "message": "Unable to parse request body as JSON",
                "extensions": {"code": "BAD_USER_INPUT", "statusCode": 400},
            }
        ]
    }


def _awaiting(task: asyncio.Task[Any]) -> list[CoroutineType[Any, Any, Any]]:
    """The coroutines ``task`` is suspended in, outermost first."""
    chain = []
    coroutine = task.get_coro()
    while isinstance(coroutine, CoroutineType):
        chain.append(coroutine)
        coroutine = coroutine.cr_await
    return chain


async def test_a_graphql_websocket_waits_in_no_coroutine_of_the_middleware_stack(server, make_user):
    # Starlette's error and exception middleware, CORS, the request id's and the router each
    # kept a suspended coroutine for an open websocket's whole life, doing nothing for it.
    handle = GraphQLTransportWSHandler.handle.__code__
    await server.app.graphql.connections.drained()
    async with websockets.connect(
        server.ws_url,
        subprotocols=["graphql-transport-ws"],
        additional_headers={"X-Request-Id": "frames-1"},
        ping_interval=None,
    ) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": server.token(await make_user())}})
        )
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        chains = [_awaiting(task) for task in asyncio.all_tasks()]
        [chain] = [chain for chain in chains if any(coroutine.cr_code is handle for coroutine in chain)]

    names = [coroutine.cr_code.co_qualname for coroutine in chain]
    served = names[names.index(App.__call__.__qualname__) :]
    # The app, the handler's loop, waiting in Starlette's receive (then the server's).
    assert served[:3] == ["App.__call__", "_Supervised.handle", "WebSocket.receive"]
    assert ws.response.headers["X-Request-Id"] == "frames-1"


async def test_any_other_websocket_still_goes_through_the_router(http, server):
    # No route: the router refuses the handshake (HTTP 403), as before.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(server.ws_url.replace("/graphql", "/elsewhere"), ping_interval=None)
    assert refused.value.response.status_code == 403
