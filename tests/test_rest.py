"""The REST endpoints over real HTTP: shapes, cursors, the error envelope, GraphQL parity, schemathesis."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport
from hypothesis.configuration import set_hypothesis_home_dir
from pymongo.errors import ServerSelectionTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, Router

from gql_api.app import create_app
from gql_api.compat import eq
from gql_api.documents import ChatMessage, isoformat_z
from gql_api.errors import ERRORS, ApiError, BadUserInput, Conflict, Forbidden, NotFound, Unauthenticated
from gql_api.pagination import encode_cursor
from gql_api.rest import MAX_BODY_BYTES, RestEdge, error_response, openapi_document
from gql_api.rest.routes import POLLING_INTERVAL_MILLIS
from tests.conftest import serve

STREAMS = "/api/v1/live-stream"
UNKNOWN_STREAM = "64d15f9e2e6c8f4d5a123000"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MESSAGE_KEYS = {"_id", "streamId", "content", "kind", "sender", "createdAt", "updatedAt"}
SENDER_KEYS = {"_id", "username", "name", "surname", "profilePhoto", "availabilityStatus"}
PHOTO_KEYS = {"_id", "url", "type", "variants", "createdAt", "updatedAt"}
ENVELOPE_KEYS = {"isSuccess", "statusCode", "data", "errors", "timestamp"}
PAGE_KEYS = {"messages", "nextCursor", "pollCursor", "pollingIntervalMillis"}


def messages_url(stream_id: Any) -> str:
    return f"{STREAMS}/{stream_id}/chat/messages"


def superlike_url(stream_id: Any) -> str:
    return f"{STREAMS}/{stream_id}/chat/superlike"


def auth(server, user, *, bearer: bool = False) -> dict[str, str]:
    token = server.token(user)
    return {"Authorization": f"Bearer {token}" if bearer else token}


def assert_envelope(response: httpx.Response, status: int, first: str) -> list[str]:
    """The response is the error envelope with this status and first entry; returns the entries."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == ENVELOPE_KEYS
    assert body["isSuccess"] is False and body["statusCode"] == status and body["data"] is None
    assert body["errors"][0] == first, body["errors"]
    assert TIMESTAMP.match(body["timestamp"])
    return body["errors"]


async def _stream_with_messages(server, make_user, make_stream, count: int) -> str:
    sender = await make_user()  # the owner: exempt from the rate limit, so it can write a history
    stream = await make_stream(sender)
    for n in range(count):
        await server.chat.send_message(sender, str(stream.id), f"m{n}")
    return str(stream.id)


def _contents(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"]]


# -- sending --------------------------------------------------------------------------------------


async def test_a_sent_message_is_201_with_exactly_the_documented_shape(server, http, make_user, make_stream):
    user = await make_user(name="John", surname="Doe", photo_url="https://img.example/john.webp")
    stream = await make_stream()
    response = await http.post(messages_url(stream.id), json={"content": "Herkese selam!"}, headers=auth(server, user))

    assert response.status_code == 201, response.text
    body = response.json()
    stored = await ChatMessage.get(body["_id"])
    photo = user.profile_photo
    assert body == {
        "_id": str(stored.id),
        "streamId": str(stream.id),
        "content": "Herkese selam!",
        "kind": "TEXT",
        "sender": {
            "_id": str(user.id),
            "username": user.username,
            "name": "John",
            "surname": "Doe",
            "profilePhoto": {
                "_id": photo.id,
                "url": "https://img.example/john.webp",
                "type": "image",
                "variants": {"40": "https://img.example/john.webp", "76": "https://img.example/john.webp"},
                "createdAt": isoformat_z(photo.created_at),
                "updatedAt": isoformat_z(photo.updated_at),
            },
            "availabilityStatus": "available",
        },
        "createdAt": isoformat_z(stored.created_at),
        "updatedAt": isoformat_z(stored.updated_at),
    }
    assert set(body) == MESSAGE_KEYS and set(body["sender"]) == SENDER_KEYS
    assert set(body["sender"]["profilePhoto"]) == PHOTO_KEYS
    for value in (body["createdAt"], body["updatedAt"], body["sender"]["profilePhoto"]["createdAt"]):
        assert TIMESTAMP.match(value)


async def test_a_sender_without_a_photo_has_a_null_profile_photo(server, http, make_user, make_stream):
    user = await make_user(photo_url=None)
    stream = await make_stream()
    response = await http.post(messages_url(stream.id), json={"content": "hi"}, headers=auth(server, user))
    assert response.status_code == 201
    assert response.json()["sender"]["profilePhoto"] is None


@pytest.mark.parametrize("bearer", [False, True], ids=["bare", "bearer"])
async def test_bare_and_bearer_tokens_are_both_accepted(server, http, make_user, make_stream, bearer):
    user = await make_user()
    stream = await make_stream()
    headers = auth(server, user, bearer=bearer)
    sent = await http.post(messages_url(stream.id), json={"content": "hi"}, headers=headers)
    listed = await http.get(messages_url(stream.id), headers=headers)
    liked = await http.post(superlike_url(stream.id), headers=headers)
    assert (sent.status_code, listed.status_code, liked.status_code) == (201, 200, 201)
    assert sent.json()["sender"]["_id"] == str(user.id)


async def test_content_is_trimmed(server, http, make_user, make_stream):
    user, stream = await make_user(), await make_stream()
    response = await http.post(messages_url(stream.id), json={"content": "  hi there \n"}, headers=auth(server, user))
    assert response.json()["content"] == "hi there"


async def test_any_unicode_round_trips(server, http, make_user, make_stream):
    user, stream = await make_user(), await make_stream()
    content = "Merhaba 👋 ğüşİ a\tb\nc \u202e\u200b"
    sent = await http.post(messages_url(stream.id), json={"content": content}, headers=auth(server, user))
    listed = await http.get(messages_url(stream.id), headers=auth(server, user))
    assert sent.json()["content"] == content
    assert _contents(listed.json()) == [content]


async def test_a_retry_with_the_same_client_message_id_returns_the_original(server, http, make_user, make_stream):
    user, stream = await make_user(), await make_stream()
    headers = auth(server, user)
    body = {"content": "once", "clientMessageId": "c-1"}
    first = await http.post(messages_url(stream.id), json=body, headers=headers)
    retry = await http.post(messages_url(stream.id), json=body, headers=headers)
    other = await http.post(messages_url(stream.id), json={**body, "content": "twice"}, headers=headers)

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    errors = assert_envelope(other, 409, Conflict.summary)
    assert "clientMessageId" in errors[1]
    assert _contents((await http.get(messages_url(stream.id), headers=headers)).json()) == ["once"]


async def test_a_superlike_is_201_once_then_409(server, http, make_user, make_stream):
    user, stream = await make_user(), await make_stream()
    first = await http.post(superlike_url(stream.id), headers=auth(server, user))
    second = await http.post(superlike_url(stream.id), headers=auth(server, user))

    assert first.status_code == 201
    body = first.json()
    assert set(body) == MESSAGE_KEYS
    assert (body["kind"], body["content"], body["streamId"]) == ("SUPERLIKE", "", str(stream.id))
    assert_envelope(second, 409, Conflict.summary)
    assert await server.chat.superlike_count(str(stream.id)) == 1


# -- history --------------------------------------------------------------------------------------


async def test_no_cursor_gives_the_newest_50_oldest_first(server, http, make_user, make_stream):
    stream_id = await _stream_with_messages(server, make_user, make_stream, 60)
    body = (await http.get(messages_url(stream_id), headers=auth(server, await make_user()))).json()

    assert set(body) == PAGE_KEYS
    assert _contents(body) == [f"m{n}" for n in range(10, 60)]
    assert all(set(m) == MESSAGE_KEYS for m in body["messages"])
    stored = await ChatMessage.get(body["messages"][0]["_id"])
    assert body["nextCursor"] == encode_cursor(stored.seq)


async def test_paging_back_from_the_newest_visits_every_message_once(server, http, make_user, make_stream):
    stream_id = await _stream_with_messages(server, make_user, make_stream, 23)
    headers = auth(server, await make_user())
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 5}
    pages = 0
    while True:
        body = (await http.get(messages_url(stream_id), params=params, headers=headers)).json()
        pages += 1
        seen = _contents(body) + seen
        if body["nextCursor"] is None:
            break
        params["before"] = body["nextCursor"]

    assert seen == [f"m{n}" for n in range(23)]
    assert pages == 5


async def test_after_pages_forward_until_null(server, http, make_user, make_stream):
    stream_id = await _stream_with_messages(server, make_user, make_stream, 12)
    headers = auth(server, await make_user())
    oldest = await ChatMessage.find_one({"stream_id": eq(stream_id), "seq": eq(1)})
    seen = [oldest.content]
    params: dict[str, Any] = {"limit": 5, "after": encode_cursor(oldest.seq)}
    pages = 0
    while True:
        body = (await http.get(messages_url(stream_id), params=params, headers=headers)).json()
        pages += 1
        seen += _contents(body)
        if body["nextCursor"] is None:
            break
        assert body["nextCursor"] == encode_cursor((await ChatMessage.get(body["messages"][-1]["_id"])).seq)
        params["after"] = body["nextCursor"]

    assert seen == [f"m{n}" for n in range(12)]
    assert pages == 3


async def test_next_cursor_is_null_at_both_ends(server, http, make_user, make_stream):
    stream_id = await _stream_with_messages(server, make_user, make_stream, 3)
    headers = auth(server, await make_user())

    async def page(**params: Any) -> dict[str, Any]:
        response = await http.get(messages_url(stream_id), params=params, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    everything = await page()
    assert _contents(everything) == ["m0", "m1", "m2"] and everything["nextCursor"] is None
    older = await page(limit=2)
    assert _contents(older) == ["m1", "m2"] and older["nextCursor"] is not None
    oldest = await page(limit=2, before=older["nextCursor"])
    assert _contents(oldest) == ["m0"] and oldest["nextCursor"] is None
    newest = await page(limit=2, after=older["nextCursor"])
    assert _contents(newest) == ["m2"] and newest["nextCursor"] is None
    empty = await page(after=encode_cursor(3))
    assert empty["messages"] == [] and empty["nextCursor"] is None


async def test_an_empty_stream_has_an_empty_page(server, http, make_user, make_stream):
    stream = await make_stream()
    response = await http.get(messages_url(stream.id), headers=auth(server, await make_user()))
    assert response.json()["messages"] == [] and response.json()["nextCursor"] is None


@pytest.mark.parametrize(
    ("params", "mentions"),
    [
        ({"limit": 0}, "query.limit"),
        ({"limit": 101}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
        ({"before": "not a cursor"}, "before"),
        ({"after": "bm9wZQ"}, "after"),
        ({"before": encode_cursor(2**63)}, "before"),
        ({"before": encode_cursor(3), "after": encode_cursor(1)}, "not both"),
    ],
)
async def test_bad_limits_and_cursors_are_400(server, http, make_user, make_stream, params, mentions):
    stream = await make_stream()
    response = await http.get(messages_url(stream.id), params=params, headers=auth(server, await make_user()))
    errors = assert_envelope(response, 400, "Validation failed")
    assert mentions in " ".join(errors[1:])


async def test_unknown_query_parameters_are_ignored(server, http, make_user, make_stream):
    stream = await make_stream()
    response = await http.get(messages_url(stream.id), params={"_": "123"}, headers=auth(server, await make_user()))
    assert response.status_code == 200


# -- the error table ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b"{not json", "body: Invalid JSON"),
        (b"", "body: Invalid JSON"),
        (b'["a list"]', "body: Input should be an object"),
        (b"{}", "body.content: Field required"),
        (b'{"content": 5}', "body.content: Input should be a valid string"),
        (b'{"content": "hi", "clientMessageID": "x"}', "body.clientMessageID: Extra inputs are not permitted"),
        (b'{"content": "hi", "clientMessageId": 7}', "body.clientMessageId"),
        (b'{"content": "   "}', "content: must be 1 to 500 characters after trimming"),
        (b'{"content": "' + b"x" * 501 + b'"}', "content: must be 1 to 500 characters after trimming"),
        (b'{"content": "hi", "clientMessageId": ""}', "body.clientMessageId: String should have at least 1"),
        (b'{"content": "hi", "clientMessageId": "' + b"c" * 65 + b'"}', "body.clientMessageId: String should have at"),
    ],
)
async def test_bad_bodies_are_400_saying_which_field(server, http, make_user, make_stream, body, mentions):
    stream = await make_stream()
    response = await http.post(
        messages_url(stream.id),
        content=body,
        headers={**auth(server, await make_user()), "Content-Type": "application/json"},
    )
    errors = assert_envelope(response, 400, "Validation failed")
    assert any(entry.startswith(mentions) for entry in errors[1:]), errors


async def test_a_missing_bad_or_expired_token_is_401(server, http, make_user, make_stream):
    user = await make_user()
    stream = await make_stream()
    ghost = await make_user()
    ghost_token = server.token(ghost)
    await ghost.delete()
    cases = {
        "missing": {},
        "empty": {"Authorization": ""},
        "garbage": {"Authorization": "garbage"},
        "bearer garbage": {"Authorization": "Bearer x.y.z"},
        "expired": {"Authorization": server.token(user, ttl=timedelta(minutes=-5))},
        "deleted user": {"Authorization": ghost_token},
    }
    for name, headers in cases.items():
        for response in (
            await http.post(messages_url(stream.id), json={"content": "hi"}, headers=headers),
            await http.get(messages_url(stream.id), headers=headers),
            await http.post(superlike_url(stream.id), headers=headers),
        ):
            errors = assert_envelope(response, 401, "Authentication required")
            if name == "expired":
                assert errors[1:] == ["the token has expired"]
    assert (await http.get(messages_url(stream.id), headers=auth(server, user))).json()["messages"] == []


@pytest.mark.parametrize("stream_id", [UNKNOWN_STREAM, "not-an-object-id"])
async def test_an_unknown_stream_is_404(server, http, make_user, stream_id):
    headers = auth(server, await make_user())
    for response in (
        await http.post(messages_url(stream_id), json={"content": "hi"}, headers=headers),
        await http.get(messages_url(stream_id), headers=headers),
        await http.post(superlike_url(stream_id), headers=headers),
    ):
        assert_envelope(response, 404, "Resource not found")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nope",
        "/api/v1/",
        "/api/v1/live-stream/x/chat",
        "/api/v1/live-stream/x/chat/messages/",
        "/api/v1/live-stream/x%0Ay/chat/nope",
    ],
)
async def test_an_unknown_route_under_the_prefix_is_404(http, path):
    assert_envelope(await http.get(path), 404, "Resource not found")


async def test_a_wrong_method_is_405_with_allow(http):
    response = await http.delete(messages_url(UNKNOWN_STREAM))
    assert_envelope(response, 405, "Method not allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert_envelope(await http.get(superlike_url(UNKNOWN_STREAM)), 405, "Method not allowed")


async def test_an_ended_stream_refuses_messages_and_superlikes_with_409(server, http, make_user, make_stream):
    owner, viewer = await make_user(), await make_user()
    stream = await make_stream(owner)
    await server.chat.send_message(viewer, str(stream.id), "before the end")
    await server.chat.end_stream(owner, str(stream.id))
    headers = auth(server, viewer)

    sent = await http.post(messages_url(stream.id), json={"content": "too late"}, headers=headers)
    liked = await http.post(superlike_url(stream.id), headers=headers)
    history = await http.get(messages_url(stream.id), headers=headers)

    assert_envelope(sent, 409, Conflict.summary)
    assert_envelope(liked, 409, Conflict.summary)
    assert _contents(history.json()) == ["before the end"]


def _body_of(size: int) -> bytes:
    """A JSON body of exactly ``size`` bytes (a content far over 500 characters)."""
    prefix, suffix = b'{"content": "', b'"}'
    return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix


async def _chunks(body: bytes, size: int = 8192):
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_a_body_over_64_kib_is_413(server, http, make_user, make_stream):
    stream = await make_stream()
    headers = {**auth(server, await make_user()), "Content-Type": "application/json"}
    url = messages_url(stream.id)

    at_limit = await http.post(url, content=_body_of(MAX_BODY_BYTES), headers=headers)
    declared = await http.post(url, content=_body_of(MAX_BODY_BYTES + 1), headers=headers)
    streamed = await http.post(url, content=_chunks(_body_of(MAX_BODY_BYTES + 1)), headers=headers)
    superlike = await http.post(superlike_url(stream.id), content=_body_of(100_000), headers=headers)

    assert_envelope(at_limit, 400, "Validation failed")  # read whole, then refused for its content
    assert "transfer-encoding" not in declared.request.headers
    assert streamed.request.headers["transfer-encoding"] == "chunked"
    for response in (declared, streamed, superlike):
        errors = assert_envelope(response, 413, "Request body too large")
        assert errors[1:] == [f"the limit is {MAX_BODY_BYTES} bytes (64 KiB)"]
    assert (await http.get(url, headers=headers)).json()["messages"] == []


async def test_the_body_cap_is_the_setting_graphql_and_rest_share(server, make_settings, make_user, make_stream):
    settings = make_settings(graphql_max_body_bytes=2048)
    stream = await make_stream()
    headers = {**auth(server, await make_user()), "Content-Type": "application/json"}
    async with (
        serve(create_app(settings, database=server.services.database)) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as client,
    ):
        rest = await client.post(messages_url(stream.id), content=_body_of(2049), headers=headers)
        graphql = await client.post("/graphql", content=b" " * 2049, headers=headers)

    errors = assert_envelope(rest, 413, "Request body too large")
    assert errors[1:] == ["the limit is 2048 bytes (2 KiB)"]
    assert graphql.status_code == 413


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - give it a traceback
        return caught


def _decode(response) -> dict[str, Any]:
    import json

    return json.loads(response.body)


@pytest.mark.allow_error_logs
def test_an_unexpected_exception_is_500_masked_and_logged_with_its_traceback(caplog):
    exc = _raised(RuntimeError("secret connection string mongodb://admin:hunter2@db"))
    with caplog.at_level(logging.ERROR, logger="gql_api.errors"):
        response = error_response(exc, "POST /api/v1/x")

    body = _decode(response)
    assert response.status_code == 500
    assert {k: v for k, v in body.items() if k != "timestamp"} == {
        "isSuccess": False,
        "statusCode": 500,
        "data": None,
        "errors": ["Internal server error"],
    }
    assert "hunter2" not in response.body.decode()
    [record] = caplog.records
    assert record.levelno == logging.ERROR and "POST /api/v1/x" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is exc and record.exc_info[2] is not None


@pytest.mark.allow_error_logs
async def test_the_edge_turns_an_exception_escaping_a_route_into_the_500_envelope(caplog):
    async def failing_app(scope, receive, send):
        raise RuntimeError("hunter2")

    transport = httpx.ASGITransport(app=RestEdge(failing_app))
    with caplog.at_level(logging.ERROR, logger="gql_api.errors"):
        async with httpx.AsyncClient(transport=transport, base_url="http://rest") as client:
            response = await client.get("/api/v1/anything")

    assert_envelope(response, 500, "Internal server error")
    assert "hunter2" not in response.text
    assert [r.exc_info[1].args for r in caplog.records] == [("hunter2",)]


def test_a_database_outage_is_503_without_a_traceback(caplog):
    with caplog.at_level(logging.WARNING, logger="gql_api.errors"):
        response = error_response(_raised(ServerSelectionTimeoutError("No servers found yet")))
    assert response.status_code == 503
    assert _decode(response)["errors"] == ["Service temporarily unavailable, try again"]
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None


SUPERLIKED = "Resource already exists: you have already superliked this stream"


@pytest.mark.parametrize(
    ("exc", "status", "errors"),
    [
        (
            BadUserInput(details=["body.content: Field required"]),
            400,
            ["Validation failed", "body.content: Field required"],
        ),
        (Unauthenticated("Authentication required: expired"), 401, ["Authentication required", "expired"]),
        (
            Forbidden("Insufficient permissions: only the owner may"),
            403,
            ["Insufficient permissions", "only the owner may"],
        ),
        (NotFound(), 404, ["Resource not found"]),
        (Conflict(SUPERLIKED), 409, [Conflict.summary, SUPERLIKED]),
        (HTTPException(405, headers={"Allow": "GET"}), 405, ["Method not allowed"]),
    ],
)
def test_every_api_error_maps_to_its_status_and_message(exc, status, errors):
    response = error_response(exc)
    assert response.status_code == status
    body = _decode(response)
    assert body["statusCode"] == status and body["errors"] == errors and body["isSuccess"] is False
    assert isinstance(exc, (ApiError, HTTPException))


async def test_an_error_an_endpoint_raises_is_enveloped_whatever_handlers_the_enclosing_app_has():
    async def superlike(request: Request) -> Response:
        raise Conflict(SUPERLIKED)

    async def not_the_envelope(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("not the envelope", status_code=418)

    rest = RestEdge(Router(routes=[Route("/superlike", superlike, methods=["POST"])]))
    handlers = {ApiError: not_the_envelope, HTTPException: not_the_envelope}
    app = Starlette(routes=[Mount("/api/v1", app=rest)], exception_handlers=handlers)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rest") as client:
        raised = await client.post("/api/v1/superlike")
        wrong_method = await client.get("/api/v1/superlike")
        unknown = await client.get("/api/v1/nothing-here")

    assert assert_envelope(raised, 409, Conflict.summary) == [Conflict.summary, SUPERLIKED]
    assert_envelope(wrong_method, 405, "Method not allowed")
    assert wrong_method.headers["allow"] == "POST"
    assert_envelope(unknown, 404, "Resource not found")


def _readme_section(title: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_rest_errors_table_is_the_error_table():
    rows = re.findall(r"^\| (\d{3}) \| ([^|`]+?) \|", _readme_section("REST"), flags=re.MULTILINE)
    documented = {(int(status), summary) for status, summary in rows}
    assert documented <= {(error.status_code, error.summary) for error in ERRORS.values()}
    in_openapi = {
        int(status)
        for item in openapi_document()["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict)
        for status in operation["responses"]
        if int(status) >= 400
    }
    assert in_openapi <= {status for status, _ in documented}


# -- GraphQL and REST are one service -------------------------------------------------------------

MESSAGE_ADDED = "subscription($s: ID!) { messageAdded(streamId: $s) { id content kind createdAt sender { id } } }"
HISTORY = "query($s: ID!) { chatMessages(streamId: $s) { edges { node { id content kind createdAt } } } }"
SEND = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id createdAt } }"


async def test_a_rest_message_reaches_graphql_subscribers_and_history(server, http, make_user, make_stream, client_for):
    viewer, sender = await make_user(), await make_user()
    stream_id = str((await make_stream()).id)
    transport = WebsocketsTransport(
        url=server.ws_url,
        init_payload={"Authorization": server.token(viewer)},
        subprotocols=["graphql-transport-ws"],
        connect_args={"ping_interval": None},
    )

    async def first_message(session) -> dict[str, Any]:
        async for result in session.subscribe(GraphQLRequest(MESSAGE_ADDED, variable_values={"s": stream_id})):
            return result["messageAdded"]
        raise AssertionError("the subscription ended without a message")

    async with Client(transport=transport) as session:
        task = asyncio.create_task(first_message(session))
        await server.services.hub.wait_for_subscribers(stream_id, 1)
        response = await http.post(messages_url(stream_id), json={"content": "from REST"}, headers=auth(server, sender))
        received = await asyncio.wait_for(task, 10)
    await server.services.hub.wait_for_subscribers(stream_id, 0)

    sent = response.json()
    expected = {"id": sent["_id"], "content": "from REST", "kind": "TEXT", "createdAt": sent["createdAt"]}
    assert received == {**expected, "sender": {"id": str(sender.id)}}
    history = (await client_for(viewer).data(HISTORY, {"s": stream_id}))["chatMessages"]
    assert [edge["node"] for edge in history["edges"]] == [expected]


async def test_a_graphql_message_shows_in_rest_history(server, http, make_user, make_stream, client_for):
    user = await make_user()
    stream_id = str((await make_stream()).id)
    sent = (await client_for(user).data(SEND, {"s": stream_id, "c": "from GraphQL"}))["sendChatMessage"]

    body = (await http.get(messages_url(stream_id), headers=auth(server, user))).json()

    [message] = body["messages"]
    assert (message["_id"], message["content"], message["createdAt"]) == (sent["id"], "from GraphQL", sent["createdAt"])
    assert message["sender"]["_id"] == str(user.id)


# -- the OpenAPI document -------------------------------------------------------------------------


async def test_the_openapi_document_is_served_without_a_token(http):
    response = await http.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document == openapi_document()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["jwt"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "The JWT, bare or as `Bearer <token>`.",
    }
    operations = {
        (path, method): operation["operationId"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    assert operations == {
        ("/live-stream/{streamId}/chat/messages", "post"): "sendChatMessage",
        ("/live-stream/{streamId}/chat/messages", "get"): "listChatMessages",
        ("/live-stream/{streamId}/chat/messages/{messageId}", "delete"): "deleteChatMessage",
        ("/live-stream/{streamId}/chat/superlike", "post"): "sendSuperlike",
    }
    schemas = document["components"]["schemas"]
    # `deletedAt` is there only on a deleted message (see test_moderation), so not required.
    assert set(schemas["Message"]["properties"]) == MESSAGE_KEYS | {"deletedAt"}
    assert "deletedAt" not in schemas["Message"].get("required", [])
    assert set(schemas["Sender"]["properties"]) == SENDER_KEYS
    assert set(schemas["ProfilePhoto"]["properties"]) == PHOTO_KEYS
    assert set(schemas["ErrorEnvelope"]["required"]) == ENVELOPE_KEYS


def test_the_openapi_error_responses_come_from_the_error_table():
    document = openapi_document()
    for code, response in document["components"]["responses"].items():
        assert response["description"] == ERRORS[code].summary
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorEnvelope"}
    for item in document["paths"].values():
        for method in ("get", "post"):
            if method not in item:
                continue
            errors = {s: r["$ref"] for s, r in item[method]["responses"].items() if int(s) >= 400}
            assert {ERRORS[ref.rsplit("/", 1)[1]].status_code for ref in errors.values()} == set(map(int, errors))
            assert {"500", "503"} <= set(errors)


# -- schemathesis: no response breaks the document, none is a 5xx ---------------------------------


def _run_schemathesis(base_url: str, token: str, stream_ids: list[str], max_examples: int) -> int:
    """Generate requests from the served document and check every response; how many were sent."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        ignored_auth,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        ignored_auth,
    ]
    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json")
    sent = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            strategies = [operation.as_strategy(schemathesis.GenerationMode.NEGATIVE)]
            strategies += [
                operation.as_strategy(schemathesis.GenerationMode.POSITIVE, path_parameters={"streamId": s})
                for s in stream_ids
            ]
            strategies.append(operation.as_strategy(schemathesis.GenerationMode.POSITIVE))

            @settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            )
            @given(case=st.one_of(strategies))
            def check(case) -> None:
                nonlocal sent
                sent += 1
                case.call_and_validate(
                    base_url=f"{base_url}/api/v1",
                    session=session,
                    headers={"Authorization": token},
                    checks=checks,
                    timeout=10,
                )

            check()
    return sent


@pytest.mark.slow
async def test_schemathesis_finds_no_response_that_breaks_the_document(server, make_user, make_stream, tmp_path):
    owner, user = await make_user(), await make_user()
    live, ended = await make_stream(owner), await make_stream(owner)
    await server.chat.send_message(owner, str(live.id), "hello")
    await server.chat.end_stream(owner, str(ended.id))

    # schemathesis is synchronous: run it in a thread, so this loop goes on serving its requests.
    set_hypothesis_home_dir(tmp_path)  # its source-constants cache, not a .hypothesis/ in the repo
    try:
        sent = await asyncio.to_thread(
            _run_schemathesis, server.url, server.token(user), [str(live.id), str(ended.id)], 60
        )
    finally:
        set_hypothesis_home_dir(None)

    assert sent >= 3 * 60


async def test_the_21st_message_in_the_window_is_429_with_retry_after(server, http, make_user, make_stream):
    user, stream = await make_user(), await make_stream()
    for n in range(20):
        sent = await http.post(messages_url(stream.id), json={"content": f"m{n}"}, headers=auth(server, user))
        assert sent.status_code == 201, sent.text

    refused = await http.post(messages_url(stream.id), json={"content": "one too many"}, headers=auth(server, user))

    errors = assert_envelope(refused, 429, "Rate limit exceeded: too many messages, slow down")
    assert 1 <= int(refused.headers["Retry-After"]) <= 30
    assert any("20 messages per 30 seconds" in e for e in errors[1:]), errors


# -- issue 8: the end, superlikes, ids, text ------------------------------------------------------


async def test_rest_senders_racing_the_end_are_stored_and_delivered_before_it_or_refused(
    server, http, make_user, make_stream
):
    owner = await make_user()  # exempt from the rate limit
    stream_id = str((await make_stream(owner)).id)
    headers = auth(server, owner)
    acknowledged: list[str] = []
    some_acknowledged = asyncio.Event()

    async def send(n: int) -> None:
        response = await http.post(messages_url(stream_id), json={"content": f"m{n}"}, headers=headers)
        if response.status_code != 201:
            assert_envelope(response, 409, Conflict.summary)
            return
        acknowledged.append(response.json()["_id"])
        if len(acknowledged) >= 3:
            some_acknowledged.set()

    query = GraphQLRequest(
        "subscription($s: ID!) { messageAdded(streamId: $s) { id } }", variable_values={"s": stream_id}
    )
    transport = WebsocketsTransport(url=server.ws_url, init_payload={"Authorization": server.token(owner)})
    async with Client(transport=transport) as session:

        async def listen() -> list[str]:
            return [result["messageAdded"]["id"] async for result in session.subscribe(query)]

        listening = asyncio.create_task(listen())
        await server.services.hub.wait_for_subscribers(stream_id, 1)
        senders = [asyncio.create_task(send(n)) for n in range(40)]
        await some_acknowledged.wait()
        ending = asyncio.create_task(server.chat.end_stream(owner, stream_id))
        senders += [asyncio.create_task(send(n)) for n in range(40, 60)]
        ended = await ending
        await asyncio.gather(*senders)
        received = await asyncio.wait_for(listening, 10)

    listed = (await http.get(messages_url(stream_id), params={"limit": 100}, headers=headers)).json()
    assert sorted(acknowledged) == sorted(m["_id"] for m in listed["messages"])
    assert received == [m["_id"] for m in listed["messages"]]
    assert all(m["createdAt"] <= isoformat_z(ended.ended_at) for m in listed["messages"])
    assert listed["nextCursor"] is None


async def test_an_ended_streams_rest_history_shows_its_messages_only(server, http, make_user, make_stream):
    owner = await make_user()
    stream_id = str((await make_stream(owner)).id)
    sent = [await server.chat.send_message(owner, stream_id, f"m{n}") for n in range(3)]
    await server.chat.end_stream(owner, stream_id)
    headers = auth(server, owner)

    newest = (await http.get(messages_url(stream_id), params={"limit": 2}, headers=headers)).json()
    forward = (
        await http.get(messages_url(stream_id), params={"after": encode_cursor(sent[1].seq)}, headers=headers)
    ).json()

    assert _contents(newest) == ["m1", "m2"] and newest["nextCursor"] is not None
    assert _contents(forward) == ["m2"] and forward["nextCursor"] is None


async def test_a_superlike_retry_after_a_lost_answer_is_409_saying_it_is_stored(server, http, make_user, make_stream):
    user, stream = await make_user(), await make_stream()
    await ChatMessage(
        stream_id=str(stream.id),
        seq=1,
        kind="SUPERLIKE",
        content="",
        sender=user.public_profile(),
        dedup_key=f"s:{user.id}",
    ).insert()  # stored as a send whose answer was lost would leave it

    retry = await http.post(superlike_url(stream.id), headers=auth(server, user))

    errors = assert_envelope(retry, 409, Conflict.summary)
    assert "stored already" in errors[1]
    assert await server.chat.superlike_count(str(stream.id)) == 1


async def test_an_upper_case_stream_id_is_the_same_stream_over_rest(server, http, make_user, make_stream):
    user, stream = await make_user(), await make_stream()
    headers = auth(server, user)
    upper = str(stream.id).upper()
    body = {"content": "hi", "clientMessageId": "c-case"}

    sent = await http.post(messages_url(upper), json=body, headers=headers)
    retry = await http.post(messages_url(stream.id), json=body, headers=headers)
    liked = await http.post(superlike_url(upper), headers=headers)
    listed = await http.get(messages_url(upper), headers=headers)

    assert (sent.status_code, retry.status_code, liked.status_code) == (201, 201, 201)
    assert sent.json()["streamId"] == str(stream.id) and retry.json() == sent.json()
    assert [m["_id"] for m in listed.json()["messages"]] == [sent.json()["_id"], liked.json()["_id"]]


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        # pydantic's JSON parser refuses a lone surrogate as invalid JSON, before the service.
        (b'{"content": "broken \\ud83d"}', "body"),
        (b'{"content": "fine", "clientMessageId": "c-\\ud83d"}', "body"),
        (b'{"content": "\\u200b\\ufeff"}', "content"),
        (b'{"content": "a\\u0000b"}', "content"),
        (b'{"content": "a\\rb"}', "content"),
    ],
)
async def test_unencodable_invisible_or_control_content_is_400(server, http, make_user, make_stream, raw, mentions):
    user, stream = await make_user(), await make_stream()
    headers = {**auth(server, user), "Content-Type": "application/json"}

    response = await http.post(messages_url(stream.id), content=raw, headers=headers)

    errors = assert_envelope(response, 400, BadUserInput.summary)
    assert any(mentions in entry for entry in errors[1:]), errors
    assert (await http.get(messages_url(stream.id), headers=headers)).json()["messages"] == []


# -- polling forward ------------------------------------------------------------------------------


async def test_polling_forward_at_the_live_edge_keeps_its_place(server, http, make_user, make_stream):
    owner = await make_user()
    stream = await make_stream(owner)
    for n in range(3):
        await server.chat.send_message(owner, str(stream.id), f"m{n}")
    headers = auth(server, await make_user())

    async def page(**params: Any) -> dict[str, Any]:
        response = await http.get(messages_url(stream.id), params=params, headers=headers)
        assert response.status_code == 200, response.text
        assert set(response.json()) == PAGE_KEYS
        return response.json()

    newest = await page()
    newest_seq = (await ChatMessage.get(newest["messages"][-1]["_id"])).seq
    assert newest["pollCursor"] == encode_cursor(newest_seq)
    assert newest["pollingIntervalMillis"] == POLLING_INTERVAL_MILLIS
    at_the_edge = await page(after=newest["pollCursor"])
    assert at_the_edge["messages"] == [] and at_the_edge["nextCursor"] is None
    assert at_the_edge["pollCursor"] == newest["pollCursor"]  # its place, not null

    await server.chat.send_message(owner, str(stream.id), "m3")
    polled = await page(after=at_the_edge["pollCursor"])

    assert _contents(polled) == ["m3"]
    assert polled["pollCursor"] == encode_cursor(newest_seq + 1)
    assert polled["pollingIntervalMillis"] == POLLING_INTERVAL_MILLIS


async def test_polling_from_an_empty_page_misses_no_message(server, http, make_user, make_stream):
    owner = await make_user()
    stream = await make_stream(owner)
    headers = auth(server, await make_user())
    empty = (await http.get(messages_url(stream.id), headers=headers)).json()
    before_the_first = (
        await http.get(messages_url(stream.id), params={"before": encode_cursor(1)}, headers=headers)
    ).json()
    assert empty["messages"] == before_the_first["messages"] == []

    await server.chat.send_message(owner, str(stream.id), "first")

    for cursor in (empty["pollCursor"], before_the_first["pollCursor"]):
        polled = (await http.get(messages_url(stream.id), params={"after": cursor}, headers=headers)).json()
        assert _contents(polled) == ["first"]


async def test_the_polling_interval_is_zero_while_newer_messages_wait(server, http, make_user, make_stream):
    stream_id = await _stream_with_messages(server, make_user, make_stream, 5)
    headers = auth(server, await make_user())
    oldest = await ChatMessage.find_one({"stream_id": eq(stream_id), "seq": eq(1)})

    behind = (
        await http.get(
            messages_url(stream_id), params={"after": encode_cursor(oldest.seq), "limit": 2}, headers=headers
        )
    ).json()
    caught_up = (
        await http.get(messages_url(stream_id), params={"after": behind["pollCursor"], "limit": 2}, headers=headers)
    ).json()

    assert _contents(behind) == ["m1", "m2"]
    assert behind["pollingIntervalMillis"] == 0 and behind["pollCursor"] == behind["nextCursor"]
    assert _contents(caught_up) == ["m3", "m4"]
    assert caught_up["pollingIntervalMillis"] == POLLING_INTERVAL_MILLIS and caught_up["nextCursor"] is None


# -- the OpenAPI document: every status, valid -----------------------------------------------------


def test_the_openapi_document_is_valid_openapi_3_1_and_every_ref_resolves():
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    document = openapi_document()
    assert [error.message for error in OPENAPI_31_VALIDATOR.iter_errors(document)] == []

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []

    for ref in refs(document):
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]  # KeyError: a dangling $ref
        assert isinstance(target, dict), ref


def test_every_status_each_operation_returns_is_documented_with_its_headers():
    document = openapi_document()
    components = document["components"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            section, name = node["$ref"].split("/")[-2:]
            node = components[section][name]
        return node

    statuses = {
        operation["operationId"]: set(operation["responses"])
        for item in document["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    }
    assert statuses == {
        "sendChatMessage": {"201", "400", "401", "403", "404", "405", "409", "413", "422", "429", "500", "503"},
        "listChatMessages": {"200", "400", "401", "404", "405", "413", "500", "503"},
        "sendSuperlike": {"201", "401", "403", "404", "405", "409", "413", "500", "503"},
        "deleteChatMessage": {"200", "400", "401", "403", "404", "405", "413", "500", "503"},
    }
    send = document["paths"]["/live-stream/{streamId}/chat/messages"]["post"]["responses"]
    retry_after = resolve(resolve(send["429"])["headers"]["Retry-After"])
    assert retry_after["required"] is True and retry_after["schema"]["type"] == "integer"
    for item in document["paths"].values():
        for method, operation in item.items():
            if method != "parameters":
                allow = resolve(resolve(operation["responses"]["405"])["headers"]["Allow"])
                assert allow["required"] is True
    assert document["info"]["license"] == {"name": "MIT", "identifier": "MIT"}
    assert (Path(__file__).parents[1] / "LICENSE").read_text().startswith("MIT License")


async def test_a_wrong_method_lists_exactly_the_documented_methods_in_allow(http):
    document = openapi_document()
    for path, item in document["paths"].items():
        documented = {method.upper() for method in item if method != "parameters"}
        documented |= {"HEAD"} if "GET" in documented else set()  # HEAD goes with GET (RFC 9110)
        url = "/api/v1" + path.replace("{streamId}", UNKNOWN_STREAM).replace("{messageId}", UNKNOWN_STREAM)
        response = await http.request("PUT", url)

        assert_envelope(response, 405, "Method not allowed")
        assert {m.strip() for m in response.headers["Allow"].split(",")} == documented
