"""/graphql over HTTP: requests refused before any operation runs, and the response media type
the client asks for with the status codes of each."""

from __future__ import annotations

import json

import pytest
from starlette.responses import Response

from gql_api.graphql.schema import build_schema
from gql_api.graphql.view import GRAPHQL_RESPONSE_JSON, JSON, GraphQLView, response_media_type
from gql_api.metrics import Metrics
from tests.test_rest import assert_envelope, auth, messages_url

BAD_USER_INPUT = {"code": "BAD_USER_INPUT", "statusCode": 400}

# Bodies no JSON parser should be asked to survive: bytes that are not UTF-8, and nesting far
# deeper than Python's recursion limit (both once crashed the endpoint with a plain-text 500).
UNPARSEABLE = {
    "not utf-8": b'{"query": "{ __typename }", "x": "\xff\xfe"}',
    "latin-1": '{"query": "{ __typename }", "x": "caf\u00e9"}'.encode("latin-1"),
    "20,000 deep": b'{"query": "{ __typename }", "variables": {"v": ' + b"[" * 20_000 + b"]" * 20_000 + b"}}",
}


NOT_AN_OPERATION = {
    "a number": (b"3", "The request body must be a JSON object (one operation) or a list of them"),
    "a string": (b'"{ __typename }"', "The request body must be a JSON object (one operation) or a list of them"),
    "null": (b"null", "The request body must be a JSON object (one operation) or a list of them"),
}


@pytest.mark.parametrize(("body", "message"), NOT_AN_OPERATION.values(), ids=NOT_AN_OPERATION.keys())
async def test_a_json_body_that_is_not_an_operation_is_400_with_a_graphql_error(http, body, message):
    response = await http.post("/graphql", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json() == {"errors": [{"message": message, "extensions": BAD_USER_INPUT}]}


@pytest.mark.parametrize("body", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
async def test_an_unparseable_body_is_400_with_a_graphql_error(http, body):
    response = await http.post("/graphql", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "errors": [{"message": "Unable to parse request body as JSON", "extensions": BAD_USER_INPUT}]
    }


async def test_a_subscription_over_http_is_400_not_run(server, http, make_user, make_stream):
    """Subscriptions are served over websockets; over HTTP one used to run as a query and fail
    as a masked INTERNAL_SERVER_ERROR."""
    user = await make_user()
    stream_id = str((await make_stream()).id)
    query = "subscription($s: ID!) { messageAdded(streamId: $s) { id } }"
    headers = {"Authorization": server.token(user), "Apollo-Require-Preflight": "true"}

    posted = await http.post("/graphql", json={"query": query, "variables": {"s": stream_id}}, headers=headers)
    got = await http.get("/graphql", params={"query": query, "variables": f'{{"s": "{stream_id}"}}'}, headers=headers)

    assert posted.status_code == 400, posted.text
    assert posted.json() == {
        "errors": [{"message": "subscriptions are not allowed when using POST", "extensions": BAD_USER_INPUT}]
    }
    assert got.status_code == 400, got.text
    assert got.json()["errors"][0]["message"] == "subscriptions are not allowed when using GET"


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


# -- the response media type ----------------------------------------------------------------------

BOTH = f"{GRAPHQL_RESPONSE_JSON}, {JSON};q=0.9"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, JSON),
        ("", JSON),
        ("*/*", JSON),
        (JSON, JSON),
        ("text/html", JSON),  # nothing this can produce: the spec lets it answer in JSON
        (GRAPHQL_RESPONSE_JSON, GRAPHQL_RESPONSE_JSON),
        (BOTH, GRAPHQL_RESPONSE_JSON),
        (f"{JSON}, {GRAPHQL_RESPONSE_JSON}", GRAPHQL_RESPONSE_JSON),  # equal: the spec's own type
        (f"{GRAPHQL_RESPONSE_JSON};q=0.5, {JSON}", JSON),
        (f"{GRAPHQL_RESPONSE_JSON};q=0.5, */*", JSON),
        (f"{GRAPHQL_RESPONSE_JSON};q=0.5, application/*;q=0.4, */*", GRAPHQL_RESPONSE_JSON),
        (f"{GRAPHQL_RESPONSE_JSON};q=0", JSON),
        ("Application/GraphQL-Response+JSON ; charset=utf-8", GRAPHQL_RESPONSE_JSON),
        (f"{GRAPHQL_RESPONSE_JSON};q=bad, {JSON}", JSON),
    ],
)
def test_the_response_media_type_follows_accept(accept, expected):
    assert response_media_type(accept) == expected


async def _post(http, token, query, variables=None, accept=BOTH):
    return await http.post(
        "/graphql",
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": token, "Accept": accept} if token else {"Accept": accept},
    )


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        pytest.param("{ me {", None, id="parse"),
        pytest.param("{ me { noSuchField } }", None, id="validation"),
        pytest.param("query($s: ID!) { liveStream(id: $s) { id } }", {"s": {"not": "an id"}}, id="variables"),
        pytest.param("{ " + " ".join(f"a{n}: __typename" for n in range(16)) + " }", None, id="a limit"),
    ],
)
async def test_a_request_error_is_400_without_data_for_graphql_response_json(server, http, make_user, query, variables):
    response = await _post(http, server.token(await make_user()), query, variables)

    assert response.status_code == 400
    assert response.headers["content-type"] == GRAPHQL_RESPONSE_JSON
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        pytest.param("{ me {", None, id="parse"),
        pytest.param("{ me { noSuchField } }", None, id="validation"),
        pytest.param("query($s: ID!) { liveStream(id: $s) { id } }", {"s": {"not": "an id"}}, id="variables"),
    ],
)
@pytest.mark.parametrize("accept", [JSON, "*/*"])
async def test_a_request_error_stays_200_with_null_data_for_application_json(
    server, http, make_user, query, variables, accept
):
    response = await _post(http, server.token(await make_user()), query, variables, accept=accept)

    assert response.status_code == 200
    assert response.headers["content-type"] == JSON
    assert response.json()["data"] is None


async def test_a_field_error_that_nulls_data_is_200_with_data_for_graphql_response_json(http):
    response = await _post(http, None, "{ me { id } }")  # no token: `me` (non-null) fails

    assert response.status_code == 200
    assert response.headers["content-type"] == GRAPHQL_RESPONSE_JSON
    body = response.json()
    assert body["data"] is None  # present: the operation ran
    assert body["errors"][0]["path"] == ["me"]
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_a_success_is_200_in_the_media_type_asked_for(server, http, make_user):
    user = await make_user()
    response = await _post(http, server.token(user), "{ me { username } }")

    assert response.status_code == 200
    assert response.headers["content-type"] == GRAPHQL_RESPONSE_JSON
    assert response.json() == {"data": {"me": {"username": user.username}}}


async def test_a_request_refused_before_parsing_answers_in_the_media_type_asked_for(http):
    garbled = await http.post("/graphql", content=b"{not json", headers={"Content-Type": JSON, "Accept": BOTH})

    assert garbled.status_code == 400
    assert garbled.headers["content-type"] == GRAPHQL_RESPONSE_JSON
    assert garbled.json()["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


# -- a POST of JSON: read by the view itself, answered as Strawberry answers it ---------------------


@pytest.mark.parametrize(
    ("content_type", "own"),
    [
        (JSON, True),
        ("application/json; charset=utf-8", True),
        (" application/json ;charset=UTF-8", True),
        ("Application/JSON", False),  # Strawberry refuses it (415-like 400): its path says so
        ("application/jsonx", False),  # JSON to Strawberry (a substring test): its path reads it
        ("text/plain", False),
        (None, False),
    ],
)
def test_a_post_of_application_json_takes_the_views_own_path(content_type, own):
    view = GraphQLView(build_schema(), metrics=Metrics(), graphiql=False)
    assert view.is_json_post("POST", content_type) is own
    assert not view.is_json_post("GET", content_type)


SAME_ANSWER = {
    "a query": {"query": "{ me { username } }"},
    "a field error": {"query": 'mutation { sendChatMessage(streamId: "nope", content: "x") { id } }'},
    "a validation error": {"query": "{ me { noSuchField } }"},
    "a syntax error": {"query": "{ me {"},
    "variables that do not coerce": {"query": "query($s: ID!) { liveStream(id: $s) { id } }", "variables": {}},
    "an unknown operation": {"query": "query A { __typename }", "operationName": "B"},
    "no query": {"variables": {}},
    "a query that is a number": {"query": 3},
    "variables that are a list": {"query": "{ __typename }", "variables": []},
    "extensions that are a string": {"query": "{ __typename }", "extensions": "x"},
    "a batch": [{"query": "{ __typename }"}],
}


@pytest.mark.parametrize("body", SAME_ANSWER.values(), ids=SAME_ANSWER.keys())
@pytest.mark.parametrize("accept", [JSON, BOTH])
@pytest.mark.parametrize("signed_in", [True, False])
async def test_a_json_post_is_answered_as_strawberrys_own_path_answers_it(
    server, http, make_user, body, accept, signed_in
):
    headers = {"Accept": accept, **(auth(server, await make_user()) if signed_in else {})}

    async def answer(content_type: str) -> tuple[int, list[tuple[str, str]], bytes]:
        response = await http.post(
            "/graphql", content=json.dumps(body), headers={**headers, "Content-Type": content_type}
        )
        kept = [(k, v) for k, v in response.headers.multi_items() if k not in ("x-request-id", "date", "server")]
        return response.status_code, kept, response.content

    # Both JSON to Strawberry; only the first to the view's own path.
    assert await answer(JSON) == await answer("application/jsonx")


def test_a_response_carries_what_resolvers_set_on_the_sub_response():
    view = GraphQLView(build_schema(), metrics=Metrics(), graphiql=False)
    sub_response = Response()
    sub_response.status_code = 202
    sub_response.media_type = GRAPHQL_RESPONSE_JSON
    sub_response.headers["x-set-by"] = "a resolver"

    response = view.create_response({"data": {"ok": True}}, sub_response)

    assert response.status_code == 202
    assert response.body == b'{"data":{"ok":true}}'
    assert response.headers["content-type"] == GRAPHQL_RESPONSE_JSON
    assert response.headers["x-set-by"] == "a resolver"
    refused = view.create_response({"errors": [{"message": "no", "extensions": {"statusCode": 403}}]}, sub_response)
    assert refused.status_code == 403  # an operation that never ran: its error's status
