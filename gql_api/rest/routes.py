"""The operations and the routes under /api/v1."""

from __future__ import annotations

import re

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp

from gql_api import documents
from gql_api.auth import token_from_header
from gql_api.errors import BadUserInput
from gql_api.metrics import Metrics
from gql_api.pagination import PageRequest, decode_cursor, encode_cursor
from gql_api.rest.edge import MAX_BODY_BYTES, RestEdge, validate
from gql_api.rest.models import DeleteMessageQuery, HistoryQuery, Message, MessagePage, SendMessageRequest
from gql_api.rest.openapi import API_PREFIX, openapi_document
from gql_api.state import services_of

# How long a client at the live edge should wait before polling again: GraphQL's `messageAdded`
# is the way to be told at once, so polling is for clients that cannot hold a websocket.
POLLING_INTERVAL_MILLIS = 2000


class RestApi:
    """The three operations, each authenticating the caller first, on the running app's services."""

    async def _user(self, request: Request) -> documents.User:
        token = token_from_header(request.headers.get("authorization"))
        return await services_of(request).authenticator.authenticate(token)

    async def send_message(self, request: Request) -> Response:
        user = await self._user(request)
        body = validate(SendMessageRequest, "body", json=await request.body())
        message = await services_of(request).chat.send_message(
            user, request.path_params["streamId"], body.content, body.client_message_id
        )
        return _json(Message.from_document(message), 201)

    async def list_messages(self, request: Request) -> Response:
        await self._user(request)
        query = validate(HistoryQuery, "query", data=dict(request.query_params))
        if query.before is not None and query.after is not None:
            raise BadUserInput(details=["query: pass either `before` or `after`, not both"])
        before = decode_cursor(query.before, argument="before") if query.before is not None else None
        after = decode_cursor(query.after, argument="after") if query.after is not None else None
        forward = after is not None
        page = await services_of(request).chat.list_messages(
            request.path_params["streamId"],
            PageRequest(limit=query.limit, from_end=not forward, after=after, before=before),
        )
        next_cursor = None
        if page.items and forward and page.has_next:
            next_cursor = encode_cursor(page.items[-1].seq)
        elif page.items and not forward and page.has_previous:
            next_cursor = encode_cursor(page.items[0].seq)
        messages = [Message.from_document(m) for m in page.items]
        return _json(
            MessagePage(
                messages=messages,
                next_cursor=next_cursor,
                poll_cursor=encode_cursor(_newest_seen(page.items, after, before)),
                polling_interval_millis=0 if page.has_next else POLLING_INTERVAL_MILLIS,
            ),
            200,
        )

    async def send_superlike(self, request: Request) -> Response:
        user = await self._user(request)
        message = await services_of(request).chat.send_superlike(user, request.path_params["streamId"])
        return _json(Message.from_document(message), 201)

    async def delete_message(self, request: Request) -> Response:
        user = await self._user(request)
        query = validate(DeleteMessageQuery, "query", data=dict(request.query_params))
        message = await services_of(request).chat.delete_message(
            user, request.path_params["streamId"], request.path_params["messageId"], query.reason
        )
        return _json(Message.from_document(message), 200)


def _newest_seen(items: list[documents.ChatMessage], after: int | None, before: int | None) -> int:
    """The sequence number a forward poll continues after: the page's newest message, else the
    position the page was asked from (just before `before`, or `after`; 0 before the first)."""
    if items:
        return items[-1].seq
    if before is not None:
        return max(before - 1, 0)
    return after or 0


def _json(model: BaseModel, status_code: int) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status_code)


def rest_app(metrics: Metrics, *, max_body_bytes: int = MAX_BODY_BYTES) -> ASGIApp:
    """The routes under /api/v1, inside the edge that caps bodies and envelopes every failure."""
    api = RestApi()
    document = openapi_document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def messages(request: Request) -> Response:  # one route, so a 405 lists both methods
        return await (api.send_message if request.method == "POST" else api.list_messages)(request)

    router = Router(
        routes=[
            Route("/live-stream/{streamId}/chat/messages", messages, methods=["GET", "POST"]),
            Route("/live-stream/{streamId}/chat/messages/{messageId}", api.delete_message, methods=["DELETE"]),
            Route("/live-stream/{streamId}/chat/superlike", api.send_superlike, methods=["POST"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        redirect_slashes=False,
    )
    return RestEdge(router, metrics, max_body_bytes=max_body_bytes)


class _PrefixMount(Mount):
    """A Mount whose prefix matches every path under it: Starlette's ``{path:path}`` is ``.*``,
    which stops at a newline, so ``/api/v1/live-stream/%0A/...`` would miss the envelope."""

    def __init__(self, path: str, app: ASGIApp) -> None:
        super().__init__(path, app=app)
        self.path_regex = re.compile(self.path_regex.pattern, re.DOTALL)


def rest_routes(metrics: Metrics, *, max_body_bytes: int = MAX_BODY_BYTES) -> list[BaseRoute]:
    """What ``create_app`` adds to its routes."""
    return [_PrefixMount(API_PREFIX, rest_app(metrics, max_body_bytes=max_body_bytes))]
