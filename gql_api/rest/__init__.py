"""The REST front end of the original API doc, beside GraphQL, over the same ``ChatService``.

Under ``/api/v1``:

- ``POST /live-stream/{streamId}/chat/messages``  body ``{"content", "clientMessageId"?}`` -> 201 message
- ``GET  /live-stream/{streamId}/chat/messages?limit=&before=|after=`` -> 200
  ``{messages, nextCursor, pollCursor, pollingIntervalMillis}``
- ``POST /live-stream/{streamId}/chat/superlike`` -> 201 message
- ``GET  /openapi.json``: the OpenAPI 3.1 document, generated from the pydantic models.

Every failure under ``/api/v1`` (unknown routes and wrong methods too) is the error envelope
``{isSuccess: false, statusCode, data: null, errors: [..], timestamp}``. Request bodies reject
unknown keys (a misspelt ``clientMessageId`` must not silently lose idempotency); unknown query
parameters are ignored (caches and proxies add them).

``models``: what comes in and goes out; ``edge``: body cap, validation, the error envelope;
``routes``: the endpoints; ``openapi``: the document.
"""

from __future__ import annotations

from gql_api.errors import PayloadTooLarge
from gql_api.rest.edge import MAX_BODY_BYTES, RestEdge, error_response
from gql_api.rest.openapi import API_PREFIX, openapi_document
from gql_api.rest.routes import rest_app, rest_routes

__all__ = [
    "API_PREFIX",
    "MAX_BODY_BYTES",
    "PayloadTooLarge",
    "RestEdge",
    "error_response",
    "openapi_document",
    "rest_app",
    "rest_routes",
]
