"""The ASGI GraphQL endpoint: authenticates each HTTP request and each websocket connection once."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types.unset import UNSET, UnsetType

from gql_api.auth import Authenticator, token_from_header
from gql_api.errors import Unauthenticated
from gql_api.graphql.context import Context
from gql_api.graphql.fanout import EventRenderer, bind_sink
from gql_api.service import ChatService

logger = logging.getLogger(__name__)

AUTH_REJECTED_CLOSE_CODE = 4403


def _token_from_params(params: dict[str, Any] | None) -> str | None:
    """The token in a ``connection_init`` payload; the key's case does not matter."""
    for key, value in (params or {}).items():
        if key.lower() == "authorization" and isinstance(value, str):
            return token_from_header(value)
    return None


def _text_sender(websocket: Any) -> Callable[[str], Awaitable[None]]:
    async def send_text(text: str) -> None:
        try:
            await websocket.ws.send_text(text)
        except WebSocketDisconnect as exc:
            raise WebSocketDisconnected from exc

    return send_text


class GraphQLTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws, with each subscription bound to its socket for shared rendering."""

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        bind_sink(
            _text_sender(self.websocket),
            operation_id=operation.id,
            frame_type="next",
            query=operation.query,
            operation_name=operation.operation_name,
            variables=operation.variables,
        )
        await super().run_operation(operation)


class LegacyGraphQLWSHandler(BaseGraphQLWSHandler[Context, None]):
    """The legacy graphql-ws protocol: shared rendering, and a rejected connection closed with
    4403 like the new protocol does."""

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        bind_sink(
            _text_sender(self.websocket),
            operation_id=operation_id,
            frame_type="data",
            query=query,
            operation_name=operation_name,
            variables=variables,
        )
        await super().handle_async_results(operation_id, query, operation_name, variables)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload")
        if payload is not None and not isinstance(payload, dict):
            await self.send_message({"type": "connection_error"})
            await self.websocket.close(code=1000, reason="")
            return
        self.context.connection_params = payload
        try:
            ack_payload = await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError as exc:
            await self.send_message({"type": "connection_error", "payload": exc.payload})
            await self.websocket.close(code=AUTH_REJECTED_CLOSE_CODE, reason="Forbidden")
            return
        if isinstance(ack_payload, UnsetType) or ack_payload is None:
            await self.send_message({"type": "connection_ack"})
        else:
            await self.send_message({"type": "connection_ack", "payload": ack_payload})
        self.connection_acknowledged = True
        if self.keep_alive:
            self.keep_alive_task = asyncio.create_task(self.handle_keep_alive())


class GraphQLView(GraphQL[Context, None]):
    """Strawberry's ASGI view with this service's context and authentication."""

    graphql_transport_ws_handler_class = GraphQLTransportWSHandler
    graphql_ws_handler_class = LegacyGraphQLWSHandler

    def __init__(
        self,
        schema: Any,
        *,
        chat: ChatService,
        authenticator: Authenticator,
        graphiql: bool,
    ) -> None:
        self.renderer = EventRenderer(schema)
        super().__init__(
            schema,
            graphql_ide="graphiql" if graphiql else None,
            connection_init_wait_timeout=timedelta(seconds=3),
            max_subscriptions_per_connection=100,
        )
        self.chat = chat
        self.authenticator = authenticator

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        context = Context(request=request, response=response, chat=self.chat, renderer=self.renderer)
        if isinstance(request, Request):
            token = token_from_header(request.headers.get("authorization"))
            try:
                context.authenticated_user = await self.authenticator.authenticate(token)
            except Unauthenticated as exc:
                context.auth_error = exc
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        try:
            context.authenticated_user = await self.authenticator.authenticate(
                _token_from_params(context.connection_params)
            )
        except Unauthenticated as exc:
            raise ConnectionRejectionError({"message": exc.message, "code": exc.code}) from exc
        return UNSET
