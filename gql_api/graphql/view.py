"""The ASGI GraphQL endpoint: authenticates each HTTP request and each websocket connection once,
caps request bodies, refuses CSRF-able requests, and hands websockets to ``websockets``.

Over HTTP it follows the GraphQL-over-HTTP spec's two response media types. A client that asks for
``application/graphql-response+json`` gets it, and a request that fails before execution (a
document that does not parse or validate, variables that do not coerce) is then a 4xx without
``data``. Anyone else gets ``application/json``, with HTTP 200 for every operation that ran,
errors included, as GraphQL clients have long expected.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

from cross_web import AsyncHTTPRequestAdapter
from cross_web import HTTPException as StrawberryHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from gql_api.auth import token_from_header
from gql_api.bodylimit import capped_receive
from gql_api.csrf import check_preflighted
from gql_api.errors import ApiError, PayloadTooLarge, Unauthenticated, error_for_status, report
from gql_api.graphql.context import Context
from gql_api.graphql.fanout import EventRenderer
from gql_api.graphql.websockets import (
    CappedWebSocketAdapter,
    Connections,
    GraphQLTransportWSHandler,
    LegacyGraphQLWSHandler,
)
from gql_api.metrics import Metrics
from gql_api.pages import graphiql_page
from gql_api.state import services_of

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"


@functools.lru_cache(maxsize=256)
def response_media_type(accept: str | None) -> str:
    """The response's media type: ``application/graphql-response+json`` when ``Accept`` ranks it
    at least as high as ``application/json``, else ``application/json``.

    No ``Accept``, ``*/*``, or only types this cannot produce all mean ``application/json``:
    the spec's default, and what a client written before the new type understands.

    Cached: a client sends the same ``Accept`` with every request, and there are few clients.
    """
    if not accept:
        return JSON
    best: dict[str, tuple[int, float]] = {}  # media range: (specificity, q) of its entry
    for entry in accept.split(","):
        media_range, *params = (part.strip() for part in entry.split(";"))
        media_range = media_range.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best[media_range] = max(best.get(media_range, (0, 0.0)), (0, q))
    graphql_q = best.get(GRAPHQL_RESPONSE_JSON, (0, 0.0))[1]
    # The most specific range that matches application/json decides its quality (RFC 9110 12.5.1).
    json_q = next((best[r][1] for r in (JSON, "application/*", "*/*") if r in best), 0.0)
    return GRAPHQL_RESPONSE_JSON if graphql_q > 0 and graphql_q >= json_q else JSON


# Strawberry's own encoding (compact separators), without building an encoder per response.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` is ``application/json``, parameters aside: one Strawberry reads
    as JSON too (its test is a substring of the type, case-sensitive; the rarer ones it passes
    are left to it)."""
    return content_type is not None and content_type.partition(";")[0].strip() == JSON


def error_response(error: ApiError, media_type: str = JSON) -> JSONResponse:
    """A request-level failure as a GraphQL response body, with the error's HTTP status."""
    body = {"errors": [{"message": error.message, "extensions": error.extensions}]}
    headers = error.headers or None  # Allow on a 405
    return JSONResponse(body, status_code=error.status_code, headers=headers, media_type=media_type)


def _is_request_error(result: ExecutionResult) -> bool:
    """Whether the operation failed before execution: every error is pathless (parsing,
    validation, a request limit, variable coercion). A field's error has a path, even when it
    nulls the whole ``data``."""
    return result.data is None and bool(result.errors) and all(e.path is None for e in result.errors or ())


def _request_error_status(errors: list[Any]) -> int:
    """The HTTP status of a response without ``data``: its errors' worst, 400 by default."""
    statuses = [
        status
        for error in errors
        if isinstance(status := (error.get("extensions") or {}).get("statusCode"), int) and 400 <= status < 600
    ]
    return max(statuses, default=400)


WS_TOKEN_MISSING = "Authentication required: send the token as Authorization in the connection_init payload"
WS_TOKEN_IN_HEADER = "Authentication required: send the token in the connection_init payload, not a handshake header"


def _token_from_params(params: dict[str, Any] | None) -> str | None:
    """The token in a ``connection_init`` payload; the key's case does not matter."""
    for key, value in (params or {}).items():
        if key.lower() == "authorization" and isinstance(value, str):
            return token_from_header(value)
    return None


class GraphQLView(GraphQL[Context, None]):
    """Strawberry's ASGI view with this service's context, authentication and supervision."""

    graphql_transport_ws_handler_class = GraphQLTransportWSHandler
    graphql_ws_handler_class = LegacyGraphQLWSHandler
    # Websocket messages get the same cap as HTTP bodies (``max_body_bytes``), then close 1009.
    websocket_adapter_class = CappedWebSocketAdapter

    def __init__(
        self,
        schema: Any,
        *,
        metrics: Metrics,
        graphiql: bool,
        connection_init_timeout: float = 3.0,
        ping_interval: float = 15.0,
        max_subscriptions: int = 100,
        max_body_bytes: int = 64 * 1024,
        allowed_origins: Sequence[str] = (),
    ) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if graphiql else None,
            connection_init_wait_timeout=timedelta(seconds=connection_init_timeout),
            max_subscriptions_per_connection=max_subscriptions,
            # Websocket handshakes from pages on other origins; the same list CORS uses.
            allowed_origins=allowed_origins,
        )
        self.renderer = EventRenderer(schema)
        self.connections = Connections(ping_interval)
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            handler = await self.open_websocket(scope, receive, send)
            if handler is not None:
                await handler.handle()
            return
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"Request body too large: at most {self.max_body_bytes} bytes")
        request = Request(scope, receive=capped_receive(scope, receive, self.max_body_bytes, too_large))
        try:
            # The whole body, read first under the cap: an oversized one is refused before it
            # is parsed or anyone is authenticated.
            await request.body()
            if self.is_json_post(scope["method"], request.headers.get("content-type")):
                response = await self.run_json(request)
            else:
                response = await self.run(request)
        except (ApiError, StrawberryHTTPException) as exc:
            # Ours (an oversized body, a CSRF refusal) and Strawberry's own refusals (bad JSON,
            # a GET mutation, batching...) as GraphQL errors.
            error = exc if isinstance(exc, ApiError) else error_for_status(exc.status_code, exc.reason)
            response = error_response(error, response_media_type(request.headers.get("accept")))
            self.metrics.error(error.code, "graphql")
        await response(scope, receive, send)

    @functools.cached_property
    def protocols_over_http(self) -> bool:
        """Whether any subscription protocol streams over HTTP (SSE, multipart): none is enabled."""
        return bool(self._stream_transport_map)

    def is_json_post(self, method: str, content_type: str | None) -> bool:
        """Whether a request is a POST of ``application/json`` (parameters aside) that Strawberry
        would read as one plain operation or batch: nothing here streams over HTTP."""
        return method == "POST" and _is_json(content_type) and not self.protocols_over_http

    async def run_json(self, request: Request) -> Response:
        """Strawberry's ``run`` for a POST of ``application/json``, nearly every operation: the
        same hooks (``get_sub_response``, ``get_context``, ``parse_http_body``,
        ``execute_operation``, ``process_result``, ``create_response``) in the same order.

        What it leaves out cannot apply to such a request: the method check and GraphiQL's page
        (GET), and the streamed results, which need an HTTP subscription protocol or
        incremental delivery, neither enabled (``run`` tells them apart by ``isinstance`` on
        runtime-checked protocols, some 3 % of a cached query's CPU).
        """
        request_adapter = self.request_adapter_class(request)
        sub_response = await self.get_sub_response(request)
        context = await self.get_context(request, response=sub_response)
        request_data = await self.parse_http_body(request_adapter)
        result = await self.execute_operation(
            request=request,
            request_adapter=request_adapter,
            request_data=request_data,
            context=context,
            root_value=None,  # this view has none (no `get_root_value`)
            sub_response=sub_response,
        )
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse]
        if isinstance(result, list):  # a batch
            response_data = [await self.process_result(request, each) for each in result]
        else:
            response_data = await self.process_result(request, cast(ExecutionResult, result))
        return self.create_response(response_data, sub_response)

    async def open_websocket(
        self, scope: Scope, receive: Receive, send: Send
    ) -> GraphQLTransportWSHandler | LegacyGraphQLWSHandler | None:
        """Strawberry's ``run`` for a websocket, up to the protocol handler it makes: the Origin
        check, the subprotocol, the accept, the context. None when the connection is refused.

        The caller then awaits the handler's ``handle`` for the connection's life: ``run``
        awaits it itself, and stays suspended around it, a coroutine more per open connection.
        """
        request = WebSocket(scope, receive=receive, send=send)
        if not self._check_websocket_origin(request):
            await self.reject_websocket(request)
            return None
        subprotocol = await self.pick_websocket_subprotocol(request)
        response = await self.create_websocket_response(request, subprotocol)
        websocket = self.websocket_adapter_class(self, request, response)
        context = await self.get_context(request, response=response)
        if subprotocol == GRAPHQL_TRANSPORT_WS_PROTOCOL:
            return self.graphql_transport_ws_handler_class(
                view=self,
                websocket=websocket,
                context=context,
                root_value=None,  # this view has none (no `get_root_value`)
                schema=self.schema,
                connection_init_wait_timeout=self.connection_init_wait_timeout,
                max_subscriptions_per_connection=self.max_subscriptions_per_connection,
            )
        if subprotocol == GRAPHQL_WS_PROTOCOL:
            return self.graphql_ws_handler_class(
                view=self,
                websocket=websocket,
                context=context,
                root_value=None,  # this view has none (no `get_root_value`)
                schema=self.schema,
                keep_alive=self.keep_alive,
                keep_alive_interval=self.keep_alive_interval,
                max_subscriptions_per_connection=self.max_subscriptions_per_connection,
            )
        await websocket.close(4406, "Subprotocol not acceptable")
        return None

    def parse_json(self, data: str | bytes) -> Any:
        # Strawberry turns only JSONDecodeError into a 400; bytes that are not UTF-8 and nesting
        # deeper than the interpreter's recursion limit raise other errors, and were 500s.
        try:
            return super().parse_json(data)
        except (UnicodeDecodeError, RecursionError) as exc:
            raise StrawberryHTTPException(400, "Unable to parse request body as JSON") from exc

    async def render_graphql_ide(self, request: Request) -> Response:
        # The app's own GraphiQL build (no CDN), under a Content-Security-Policy.
        return graphiql_page(request)

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter) -> GraphQLRequestData | list[GraphQLRequestData]:
        # Only operations are checked: GraphiQL's page (a plain GET) is rendered before this.
        check_preflighted(request.headers)
        if self.is_json_post(request.method, request.content_type):
            # Strawberry's reading of a JSON body, without its `email` parse of the content type.
            return self.request_data(self.parse_json(await request.get_body()))
        return await super().parse_http_body(request)

    def request_data(self, data: Any) -> GraphQLRequestData | list[GraphQLRequestData]:
        """A JSON body's operation (or batch of them), checked as Strawberry checks it."""
        if isinstance(data, list):
            self._validate_batch_request(data, protocol="http")
            if not all(isinstance(item, dict) for item in data):
                raise StrawberryHTTPException(400, "Each operation of a batch must be a JSON object")
            return [
                GraphQLRequestData(
                    query=item.get("query"),
                    variables=item.get("variables"),
                    operation_name=item.get("operationName"),
                    extensions=item.get("extensions"),
                )
                for item in data
            ]
        if not isinstance(data, dict):
            raise StrawberryHTTPException(
                400, "The request body must be a JSON object (one operation) or a list of them"
            )
        query = data.get("query")
        if not isinstance(query, str | None):
            raise StrawberryHTTPException(400, "The GraphQL operation's `query` must be a string or null, if provided.")
        variables = data.get("variables")
        if not isinstance(variables, dict | None):
            raise StrawberryHTTPException(
                400, "The GraphQL operation's `variables` must be an object or null, if provided."
            )
        extensions = data.get("extensions")
        if not isinstance(extensions, dict | None):
            raise StrawberryHTTPException(
                400, "The GraphQL operation's `extensions` must be an object or null, if provided."
            )
        return GraphQLRequestData(
            query=query, variables=variables, operation_name=data.get("operationName"), extensions=extensions
        )

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        # Carried to `create_response`, which is not given the request.
        sub_response.media_type = response_media_type(request.headers.get("accept"))
        return sub_response

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        response_data = await super().process_result(request, result)
        if _is_request_error(result) and response_media_type(request.headers.get("accept")) == GRAPHQL_RESPONSE_JSON:
            # The spec's mark of an operation that never ran; `create_response` makes it a 4xx.
            del response_data["data"]
        return response_data

    def encode_json(self, data: object) -> str:
        return _ENCODER.encode(data)

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        # Strawberry's response (its body, then the resolvers' headers and status on
        # `sub_response`), in the media type asked for; built once, not rewritten.
        media_type = sub_response.media_type or JSON
        status_code = sub_response.status_code or 200
        # A batch (not in the spec) stays 200: its operations may have fared differently.
        if media_type == GRAPHQL_RESPONSE_JSON and isinstance(response_data, dict) and "data" not in response_data:
            status_code = _request_error_status(response_data.get("errors") or [])
        response = Response(self.encode_json(response_data), status_code=status_code, media_type=media_type)
        response.raw_headers.extend(sub_response.raw_headers)
        if sub_response.background:
            response.background = sub_response.background
        return response

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        services = services_of(request)
        context = Context(
            request=request,
            response=response,
            chat=services.chat,
            authenticator=services.authenticator,
            renderer=self.renderer,
            viewers=services.viewers,
        )
        if isinstance(request, Request):
            token = token_from_header(request.headers.get("authorization"))
            try:
                context.authenticated_user = await context.authenticator.authenticate(token)
            except Exception as exc:  # noqa: BLE001 - becomes the operation's error, below
                # Ours as they are; a database outage while looking the user up is
                # SERVICE_UNAVAILABLE, not UNAUTHENTICATED nor a crash. The resolvers raise it
                # through `context.user`.
                context.auth_error = report(exc, "authentication")
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        token = _token_from_params(context.connection_params)
        try:
            if token is None:
                # Over websockets the token goes in connection_init, not in a header.
                in_header = context.request.headers.get("authorization")
                raise Unauthenticated(WS_TOKEN_IN_HEADER if in_header else WS_TOKEN_MISSING)
            user, claims = await context.authenticator.authenticate_claims(token)
        except Unauthenticated as exc:
            raise ConnectionRejectionError({"message": exc.message, "code": exc.code}) from exc
        context.authenticated_user = user
        context.token_expires_at = claims.expires_at
        # UNSET, not None: Strawberry's own graphql-transport-ws handler would send None as
        # `"payload": null`; UNSET always means an ack without a payload.
        no_payload: UnsetType = UNSET
        return no_payload
