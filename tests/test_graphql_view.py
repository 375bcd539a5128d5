"""/graphql over HTTP: the response media type the client asks for, and the status codes of each."""

from __future__ import annotations

import pytest

from gql_api.graphql.view import GRAPHQL_RESPONSE_JSON, JSON, response_media_type

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
    "query, variables",
    [
        pytest.param("{ me {", None, id="parse"),
        pytest.param("{ me { noSuchField } }", None, id="validation"),
        pytest.param("query($s: ID!) { liveStream(id: $s) { id } }", {"s": {"not": "an id"}}, id="variables"),
    ],
)
async def test_a_request_error_is_400_without_data_for_graphql_response_json(
    server, http, make_user, query, variables
):
    response = await _post(http, server.token(await make_user()), query, variables)

    assert response.status_code == 400
    assert response.headers["content-type"] == GRAPHQL_RESPONSE_JSON
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


@pytest.mark.parametrize(
    "query, variables",
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
    garbled = await http.post(
        "/graphql", content=b"{not json", headers={"Content-Type": JSON, "Accept": BOTH}
    )

    assert garbled.status_code == 400
    assert garbled.headers["content-type"] == GRAPHQL_RESPONSE_JSON
    assert garbled.json()["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}
