"""The ASGI GraphQL endpoint: authenticates each HTTP request and each websocket connection once."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types.unset import UNSET, UnsetType

from gql_api.auth import Authenticator, token_from_header
from gql_api.errors import Unauthenticated
from gql_api.graphql.context import Context
from gql_api.service import ChatService

logger = logging.getLogger(__name__)

AUTH_REJECTED_CLOSE_CODE = 4403


def _token_from_params(params: dict[str, Any] | None) -> str | None:
    """The token in a ``connection_init`` payload; the key's case does not matter."""
    for key, value in (params or {}).items():
        if key.lower() == "authorization" and isinstance(value, str):
            return token_from_header(value)
    return None


class LegacyGraphQLWSHandler(BaseGraphQLWSHandler[Context, None]):
    """The legacy graphql-ws protocol, closing a rejected connection with 4403 like the new one."""

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

    graphql_ws_handler_class = LegacyGraphQLWSHandler

    def __init__(
        self,
        schema: Any,
        *,
        chat: ChatService,
        authenticator: Authenticator,
        graphiql: bool,
    ) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if graphiql else None,
            connection_init_wait_timeout=timedelta(seconds=3),
            max_subscriptions_per_connection=100,
        )
        self.chat = chat
        self.authenticator = authenticator

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        context = Context(request=request, response=response, chat=self.chat)
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
