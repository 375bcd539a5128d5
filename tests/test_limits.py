"""GraphQL request limits: depth, aliases, tokens, body size and batching, over HTTP and websockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from graphql import get_introspection_query

from gql_api.app import create_app
from tests.conftest import LiveServer, serve

LIMIT = 64 * 1024


def _aliases(count: int) -> str:
    return " ".join(f"a{n}: __typename" for n in range(count))


def _errors(response: httpx.Response) -> list[dict]:
    body = response.json()
    assert body.get("errors"), body
    return body["errors"]


@pytest.fixture(scope="module")
async def strict(server, make_settings) -> AsyncIterator[LiveServer]:
    """An app with small limits, to reach them with valid queries.

    Its lifespan is off: a second lifespan would re-bind Beanie (which is global) to its own
    client and close it on exit, under the session's app. It uses the session's database
    through the session app's binding, so it depends on ``server``.
    """
    settings = make_settings(graphql_max_depth=3, graphql_max_body_bytes=2048, graphql_batch_max_operations=2)
    async with serve(create_app(settings), lifespan="off") as live:
        yield live


async def test_aliases_over_the_limit_are_refused(http):
    allowed = await http.post("/graphql", json={"query": f"{{ {_aliases(15)} }}"})
    refused = await http.post("/graphql", json={"query": f"{{ {_aliases(16)} }}"})

    assert allowed.json()["data"]["a14"] == "Query"
    assert refused.status_code == 200
    [error] = _errors(refused)
    assert error["message"] == "16 aliases found. Allowed: 15"
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}
    assert refused.json()["data"] is None


def _tokens(count: int) -> str:
    """A valid query of exactly ``count`` tokens (about 1,600 to 2,500).

    Spread over many field names: graphql-core gives up on a document that repeats one field
    hundreds of times ("Validation aborted."), which would hide the token limit.
    """
    def repeat(fields: list[str], times: int) -> str:
        return (" " + " ".join(fields)) * times

    user = ["id", "username", "name", "surname", "availabilityStatus", "__typename"]
    photo = ["id", "url", "type", "createdAt", "updatedAt", "__typename"]
    rest = count - 11 - 6 * 130 - 6 * 130  # 11 tokens of braces and the three object fields
    return (
        "{" + repeat(["__typename"], rest - 3 * (rest // 4)) + " me {" + repeat(user, 130)
        + " profilePhoto {" + repeat(photo, 130) + " variants {" + repeat(["size", "url", "__typename"], rest // 4)
        + " } } } }"
    )


async def test_tokens_over_the_limit_are_refused(make_user, client_for):
    client = client_for(await make_user())
    allowed = await client.execute(_tokens(2000))
    refused = await client.execute(_tokens(2001))

    assert "errors" not in allowed, allowed["errors"]
    assert allowed["data"]["me"]["profilePhoto"]["url"].startswith("https://")
    [error] = refused["errors"]
    assert error["message"] == "Syntax Error: Document contains more than 2000 tokens. Parsing aborted."
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


async def test_depth_over_the_default_limit_is_refused(http):
    # Depth counts levels below the root field: `{ me { id } }` is 1. This schema has no
    # cycles, so no valid query is deeper than 10; the limit holds all the same.
    def nested(depth: int) -> str:
        return "{ me " + "{ a " * depth + "}" * (depth + 1)

    at_limit = _errors(await http.post("/graphql", json={"query": nested(10)}))
    over = _errors(await http.post("/graphql", json={"query": nested(11)}))

    message = "'anonymous' exceeds maximum operation depth of 10"
    assert message not in [e["message"] for e in at_limit]
    assert message in [e["message"] for e in over]
    assert {e["extensions"]["code"] for e in over} == {"BAD_USER_INPUT"}


async def test_depth_limit_is_configurable(strict):
    async with httpx.AsyncClient(base_url=strict.url) as client:
        at_limit = await client.post("/graphql", json={"query": "{ me { profilePhoto { variants { url } } } }"})
        over = await client.post(
            "/graphql", json={"query": '{ chatMessages(streamId: "x") { edges { node { sender { id } } } } }'}
        )

    # At the limit the query runs (and needs a token); one level deeper it never runs.
    assert _errors(at_limit)[0]["extensions"]["code"] == "UNAUTHENTICATED"
    [error] = _errors(over)
    assert error["message"] == "'anonymous' exceeds maximum operation depth of 3"
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


async def test_graphiql_introspection_fits_the_default_limits(http):
    query = get_introspection_query(
        descriptions=True, specified_by_url=True, directive_is_repeatable=True,
        schema_description=True, input_value_deprecation=True,
    )
    body = (await http.post("/graphql", json={"query": query})).json()
    assert "errors" not in body, body.get("errors")
    assert body["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_a_body_over_64_kib_is_413_with_a_graphql_error(http):
    def body_of(size: int) -> bytes:
        head = json.dumps({"query": "{ __typename }", "variables": {"pad": ""}})
        return head.replace('"pad": ""', '"pad": "' + "x" * (size - len(head)) + '"').encode()

    allowed = await http.post("/graphql", content=body_of(LIMIT), headers={"Content-Type": "application/json"})
    refused = await http.post("/graphql", content=body_of(LIMIT + 1), headers={"Content-Type": "application/json"})

    assert allowed.json() == {"data": {"__typename": "Query"}}
    assert refused.status_code == 413
    assert refused.headers["content-type"] == "application/json"
    assert refused.json() == {
        "errors": [
            {
                "message": "Request body too large: at most 65536 bytes",
                "extensions": {"code": "PAYLOAD_TOO_LARGE", "statusCode": 413},
            }
        ]
    }


async def test_a_chunked_body_is_cut_off_at_the_limit(strict):
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"query": "{ __typename }", "variables": {"pad": "'
        for _ in range(3):
            yield b"x" * 1024
        yield b'"}}'

    async with httpx.AsyncClient(base_url=strict.url) as client:
        response = await client.post("/graphql", content=chunks(), headers={"Content-Type": "application/json"})

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"] == {"code": "PAYLOAD_TOO_LARGE", "statusCode": 413}


async def test_batching_is_off_by_default(http):
    response = await http.post("/graphql", json=[{"query": "{ __typename }"}, {"query": "{ __typename }"}])
    assert response.status_code == 400
    assert response.json() == {
        "errors": [
            {"message": "Batching is not enabled", "extensions": {"code": "BAD_USER_INPUT", "statusCode": 400}}
        ]
    }


async def test_batching_can_be_turned_on_with_a_maximum(strict):
    async with httpx.AsyncClient(base_url=strict.url) as client:
        two = await client.post("/graphql", json=[{"query": "{ __typename }"}] * 2)
        three = await client.post("/graphql", json=[{"query": "{ __typename }"}] * 3)

    assert two.json() == [{"data": {"__typename": "Query"}}] * 2
    assert three.status_code == 400
    assert three.json()["errors"][0]["message"] == "Too many operations"


async def _subscribe(server: LiveServer, token: str, query: str) -> tuple[dict | None, int | None]:
    """Subscribe over graphql-transport-ws: the server's first answer, or how it closed."""
    async with websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        try:
            message = json.loads(await ws.recv())
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None
            return {"reason": closed.rcvd.reason}, closed.rcvd.code
        # A refused operation leaves the connection up.
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"
        return message, None


async def test_limits_apply_to_subscriptions_over_websockets(server, make_user, make_stream):
    token = server.token(await make_user())
    stream_id = str((await make_stream()).id)
    aliases = " ".join(f"a{n}: id" for n in range(16))
    fields = " ".join(["id", "content", "kind", "cursor", "createdAt", "streamId", "__typename"] * 300)

    aliased, _ = await _subscribe(server, token, f'subscription {{ messageAdded(streamId: "{stream_id}") {{ {aliases} }} }}')
    long, close_code = await _subscribe(server, token, f'subscription {{ messageAdded(streamId: "{stream_id}") {{ {fields} }} }}')

    assert aliased is not None and aliased["type"] == "error" and aliased["id"] == "1"
    assert aliased["payload"] == [
        {
            "message": "16 aliases found. Allowed: 15",
            "extensions": {"code": "BAD_USER_INPUT", "statusCode": 400},
        }
    ]
    # A document that does not parse closes the connection with 4400 (graphql-transport-ws).
    assert close_code == 4400, long
    assert long == {"reason": "Syntax Error: Document contains more than 2000 tokens. Parsing aborted."}
    assert server.app.state.hub.subscriber_count(stream_id) == 0
