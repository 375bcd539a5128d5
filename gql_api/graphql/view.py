"""The ASGI GraphQL endpoint: authenticates each HTTP request and each websocket connection once,
caps request bodies, refuses CSRF-able requests, and hands websockets to ``websockets``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from cross_web import AsyncHTTPRequestAdapter
from cross_web import HTTPException as StrawberryHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLRequestData
from strawberry.types.unset import UNSET, UnsetType

from gql_api.auth import token_from_header
from gql_api.bodylimit import capped_receive
from gql_api.csrf import check_preflighted
from gql_api.errors import (
    ApiError,
    BadUserInput,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    as_api_error,
)
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

logger = logging.getLogger(__name__)


_STATUS_ERRORS: dict[int, type[ApiError]] = {
    400: BadUserInput,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def error_response(error: ApiError) -> JSONResponse:
    """A request-level failure as a GraphQL response body, with the error's HTTP status."""
    body = {"errors": [{"message": error.message, "extensions": error.extensions}]}
    return JSONResponse(body, status_code=error.status_code)


def _status_error(status_code: int, message: str) -> ApiError:
    error_class = _STATUS_ERRORS.get(status_code, BadUserInput)
    return error_class(message or None)


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
    websocket_adapter_class = CappedWebSocketAdapter  # type: ignore[assignment]

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
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"Request body too large: at most {self.max_body_bytes} bytes")
        request = Request(scope, receive=capped_receive(scope, receive, self.max_body_bytes, too_large))
        try:
            # The whole body, read first under the cap: an oversized one is refused before it
            # is parsed or anyone is authenticated.
            await request.body()
            response = await self.run(request)
        except ApiError as exc:
            response = error_response(exc)
            self.metrics.error(exc.code, "graphql")
        except StrawberryHTTPException as exc:
            # Strawberry's own refusals (bad JSON, GET mutation, batching...) as GraphQL errors.
            error = _status_error(exc.status_code, exc.reason)
            response = error_response(error)
            self.metrics.error(error.code, "graphql")
            if exc.status_code == 405:
                response.headers["Allow"] = "GET, POST"  # RFC 9110 requires it on a 405
        await response(scope, receive, send)

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

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        # Only operations are checked: GraphiQL's page (a plain GET) is rendered before this.
        check_preflighted(request.headers)
        return await super().parse_http_body(request)

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        services = services_of(request)
        context = Context(
            request=request,
            response=response,
            chat=services.chat,
            authenticator=services.authenticator,
            renderer=self.renderer,
        )
        if isinstance(request, Request):
            token = token_from_header(request.headers.get("authorization"))
            try:
                context.authenticated_user = await context.authenticator.authenticate(token)
            except ApiError as exc:
                context.auth_error = exc
            except Exception as exc:  # noqa: BLE001 - becomes the operation's error, below
                # A database outage while looking the user up is SERVICE_UNAVAILABLE, not
                # UNAUTHENTICATED nor a crash: the resolvers raise it through `context.user`.
                context.auth_error = as_api_error(exc)
                if context.auth_error.status_code == 500:
                    logger.error("Unexpected error while authenticating", exc_info=exc)
                else:
                    logger.warning("%s while authenticating: %r", context.auth_error.code, exc)
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
        return UNSET
