"""What every resolver can reach: the services and the caller, authenticated at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from gql_api.auth import Authenticator
from gql_api.documents import User
from gql_api.errors import ApiError, Unauthenticated
from gql_api.graphql.fanout import EventRenderer
from gql_api.service import ChatService
from gql_api.viewers import ViewerCounts


@dataclass
class Context:
    """Per HTTP request, or per websocket connection."""

    request: Request | WebSocket
    response: Response | WebSocket
    chat: ChatService
    authenticator: Authenticator
    renderer: EventRenderer
    viewers: ViewerCounts
    connection_params: dict[str, Any] | None = None
    authenticated_user: User | None = None
    token_expires_at: datetime | None = None
    auth_error: ApiError | None = field(default=None, repr=False)

    @property
    def user(self) -> User:
        """The caller; raises the edge's authentication error when there is none."""
        if self.authenticated_user is None:
            raise self.auth_error or Unauthenticated()
        return self.authenticated_user
