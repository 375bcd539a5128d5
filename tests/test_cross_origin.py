"""CSRF prevention (Apollo Server's rule), CORS and the websocket Origin check: one origin list."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets

from gql_api.app import create_app
from tests.conftest import LiveServer, serve

ALLOWED = "https://chat.example"
OTHER = "https://evil.example"
TYPENAME = {"query": "{ __typename }"}
CSRF = "Cross-Site Request Forgery"


@pytest.fixture(scope="module")
async def with_origins(server, make_settings) -> AsyncIterator[LiveServer]:
    """An app that lets pages on ALLOWED in, on the session app's database."""
    settings = make_settings(allowed_origins=f"{ALLOWED}, http://localhost:3000")
    async with serve(create_app(settings, database=server.services.database)) as live:
        yield live


def _error(response: httpx.Response) -> dict:
    [error] = response.json()["errors"]
    return error


async def test_a_get_without_a_preflight_header_is_refused(http):
    response = await http.get("/graphql", params=TYPENAME)

    assert response.status_code == 400
    error = _error(response)
    assert CSRF in error["message"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


async def test_the_refusal_names_the_header_to_send(http):
    # urql (6) sends queries as GET by default: its users meet this message first, so it spells
    # out the header line that fixes it, which the next request then carries and runs.
    refused = await http.get("/graphql", params=TYPENAME)
    message = _error(refused)["message"]
    header, value = "Apollo-Require-Preflight", "true"

    assert f"{header}: {value}" in message
    assert "POST with Content-Type: application/json" in message
    fixed = await http.get("/graphql", params=TYPENAME, headers={header: value})
    assert fixed.json() == {"data": {"__typename": "Query"}}


@pytest.mark.parametrize("header", ["Apollo-Require-Preflight", "GraphQL-Require-Preflight", "X-Apollo-Operation-Name"])
async def test_a_get_with_a_preflight_header_runs(http, header):
    allowed = await http.get("/graphql", params=TYPENAME, headers={header: "true"})
    empty = await http.get("/graphql", params=TYPENAME, headers={header: ""})

    assert allowed.json() == {"data": {"__typename": "Query"}}
    assert empty.status_code == 400 and CSRF in _error(empty)["message"]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ],
)
async def test_a_post_a_browser_sends_without_a_preflight_is_refused(http, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    request = http.build_request("POST", "/graphql", content=json.dumps(TYPENAME), headers=headers)
    if content_type is None:
        request.headers.pop("Content-Type", None)
        assert "content-type" not in request.headers

    response = await http.send(request)

    assert response.status_code == 400
    assert CSRF in _error(response)["message"]
    assert _error(response)["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_json_post_needs_no_extra_header(http):
    response = await http.post("/graphql", json=TYPENAME)
    assert response.json() == {"data": {"__typename": "Query"}}


async def test_mutations_never_run_over_get(make_user, make_stream, server, http):
    user = await make_user()
    stream = await make_stream()
    mutation = f'mutation {{ sendChatMessage(streamId: "{stream.id}", content: "via GET") {{ id }} }}'

    response = await http.get(
        "/graphql",
        params={"query": mutation},
        headers={"Authorization": server.token(user), "Apollo-Require-Preflight": "true"},
    )

    assert response.status_code == 400
    error = _error(response)
    assert "mutations are not allowed when using GET" in error["message"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}
    assert await server.chat.store.newest(str(stream.id)) is None  # nothing was stored


async def test_cors_answers_allowed_origins_only(with_origins):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization",
    }
    async with httpx.AsyncClient(base_url=with_origins.url) as client:
        allowed = await client.options("/graphql", headers={"Origin": ALLOWED, **preflight})
        other = await client.options("/graphql", headers={"Origin": OTHER, **preflight})
        post_allowed = await client.post("/graphql", json=TYPENAME, headers={"Origin": ALLOWED})
        post_other = await client.post("/graphql", json=TYPENAME, headers={"Origin": OTHER})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert {"authorization", "content-type", "apollo-require-preflight"} <= {
        h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")
    }
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert post_allowed.headers["access-control-allow-origin"] == ALLOWED
    # The server answers, but without the header the browser keeps the answer from the page.
    assert "access-control-allow-origin" not in post_other.headers


async def test_by_default_no_other_origin_is_allowed(http):
    preflight = await http.options("/graphql", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"})
    post = await http.post("/graphql", json=TYPENAME, headers={"Origin": ALLOWED})

    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in post.headers


async def _handshake(live: LiveServer, token: str, origin: str | None) -> int | str:
    """The HTTP status of a refused websocket handshake, or the first message once accepted."""
    try:
        async with websockets.connect(
            live.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None, origin=origin
        ) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
            return json.loads(await ws.recv())["type"]
    except websockets.InvalidStatus as refused:
        return refused.response.status_code


async def test_websockets_from_other_origins_are_refused(with_origins, server, make_user):
    token = server.token(await make_user())
    own_origin = server.url  # same host and port as the socket: always allowed

    assert await _handshake(with_origins, token, ALLOWED) == "connection_ack"
    assert await _handshake(with_origins, token, "http://localhost:3000") == "connection_ack"
    assert await _handshake(with_origins, token, OTHER) == 403
    assert await _handshake(with_origins, token, None) == "connection_ack"  # not a browser
    assert await _handshake(server, token, ALLOWED) == 403  # the default list is empty
    assert await _handshake(server, token, own_origin) == "connection_ack"
