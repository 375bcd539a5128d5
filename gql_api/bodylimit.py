"""The request body cap that both front ends (GraphQL and REST) put in front of their handlers.

Not Starlette's ``RequestBodyLimitMiddleware``: it answers in plain text, and replaces any
response once a declared ``Content-Length`` is over the limit, so neither front end could send
its own error body.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope

from gql_api.errors import PayloadTooLarge


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, when it declares a valid one."""
    declared = Headers(scope=scope).get("content-length", "")
    return int(declared) if declared.isdigit() else None


def capped_receive(scope: Scope, receive: Receive, max_bytes: int, too_large: PayloadTooLarge) -> Receive:
    """``receive`` that raises ``too_large`` once the body is (or says it will be) too big."""
    if (declared_length(scope) or 0) > max_bytes:

        async def refuse() -> Message:
            raise too_large  # before reading a byte of it

        return refuse
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise too_large  # a chunked body is cut off as soon as it passes the limit
        return message

    return counted
