"""The GraphQL endpoint's HTTP edge: requests refused before any operation runs."""

from __future__ import annotations

import pytest

from tests.test_rest import assert_envelope, auth, messages_url

BAD_USER_INPUT = {"code": "BAD_USER_INPUT", "statusCode": 400}

# Bodies no JSON parser should be asked to survive: bytes that are not UTF-8, and nesting far
# deeper than Python's recursion limit (both once crashed the endpoint with a plain-text 500).
UNPARSEABLE = {
    "not utf-8": b'{"query": "{ __typename }", "x": "\xff\xfe"}',
    "latin-1": '{"query": "{ __typename }", "x": "caf\u00e9"}'.encode("latin-1"),
    "20,000 deep": b'{"query": "{ __typename }", "variables": {"v": ' + b"[" * 20_000 + b"]" * 20_000 + b"}}",
}


@pytest.mark.parametrize("body", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
async def test_an_unparseable_body_is_400_with_a_graphql_error(http, body):
    response = await http.post("/graphql", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "errors": [{"message": "Unable to parse request body as JSON", "extensions": BAD_USER_INPUT}]
    }


async def test_unparseable_variables_in_a_get_query_are_400(http):
    deep = "[" * 5_000 + "]" * 5_000  # beyond the recursion limit, within httpx's URL limit
    response = await http.get(
        "/graphql",
        params={"query": "{ __typename }", "variables": '{"v": ' + deep + "}"},
        headers={"Apollo-Require-Preflight": "true"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["extensions"] == BAD_USER_INPUT


@pytest.mark.parametrize("body", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
async def test_an_unparseable_rest_body_is_400_in_the_envelope(server, http, make_user, make_stream, body):
    stream = await make_stream()
    response = await http.post(
        messages_url(stream.id),
        content=body,
        headers={**auth(server, await make_user()), "Content-Type": "application/json"},
    )
    errors = assert_envelope(response, 400, "Validation failed")
    assert errors[1].startswith("body: Invalid JSON"), errors


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_another_method_is_405_with_allow(http, method):
    response = await http.request(method, "/graphql", json={"query": "{ __typename }"})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert response.json()["errors"][0]["extensions"] == {"code": "METHOD_NOT_ALLOWED", "statusCode": 405}
