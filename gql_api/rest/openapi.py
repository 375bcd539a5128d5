"""The OpenAPI 3.1 document, its schemas generated from the models the endpoints use."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from gql_api.errors import (
    ApiError,
    BadUserInput,
    Conflict,
    ContentBlocked,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Unauthenticated,
)
from gql_api.rest.models import (
    DeleteMessageQuery,
    ErrorEnvelope,
    HistoryQuery,
    Message,
    MessagePage,
    SendMessageRequest,
)

API_PREFIX = "/api/v1"
REF_TEMPLATE = "#/components/schemas/{model}"

LICENSE = {"name": "MIT", "identifier": "MIT"}  # the repository's LICENSE file

# Every operation can answer these: a wrong method (405), a body over the cap, which the edge
# refuses before routing, even where the operation reads none (413), and the unexpected (500, 503).
_ANY_OPERATION: tuple[type[ApiError], ...] = (MethodNotAllowed, PayloadTooLarge, ApiError, ServiceUnavailable)
_ERROR_HEADERS: dict[type[ApiError], dict[str, str]] = {  # {header name: name in components.headers}
    MethodNotAllowed: {"Allow": "Allow"},
    RateLimited: {"Retry-After": "RetryAfter"},
}
_HEADERS = {
    "Allow": {
        "description": "The methods the path takes, e.g. `GET, HEAD, POST` (HEAD wherever GET is).",
        "required": True,
        "schema": {"type": "string"},
    },
    "RetryAfter": {
        "description": "In how many whole seconds the next message will be accepted.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: an absent parameter, not null, stands for None."""
    schema = dict(schema)
    if "anyOf" in schema:
        branches = [b for b in schema.pop("anyOf") if b.get("type") != "null"]
        schema.update(branches[0] if len(branches) == 1 else {"anyOf": branches})
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, its schemas generated from the models the endpoints use."""
    components: dict[str, Any] = {}

    def ref(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
        return {"$ref": REF_TEMPLATE.format(model=model.__name__)}

    def json_content(schema: dict[str, Any]) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": schema}}}

    error = ref(ErrorEnvelope, "serialization")
    message = ref(Message, "serialization")

    def error_response(error_class: type[ApiError]) -> dict[str, Any]:
        response: dict[str, Any] = {"description": error_class.summary}
        if headers := _ERROR_HEADERS.get(error_class):
            response["headers"] = {
                name: {"$ref": f"#/components/headers/{component}"} for name, component in headers.items()
            }
        return {**response, **json_content(error)}

    # One response per error code, named by it, described by its summary (errors[0]).
    error_responses: dict[str, Any] = {}

    def responses(success: int, description: str, schema: dict[str, Any], *errors: type[ApiError]) -> dict[str, Any]:
        result = {str(success): {"description": description, **json_content(schema)}}
        for error_class in sorted({*errors, *_ANY_OPERATION}, key=lambda e: e.status_code):
            error_responses[error_class.code] = error_response(error_class)
            result[str(error_class.status_code)] = {"$ref": f"#/components/responses/{error_class.code}"}
        return result

    stream_id = {
        "name": "streamId",
        "in": "path",
        "required": True,
        "description": "The live stream's id.",
        "schema": {"type": "string"},
    }

    def query_parameters_of(model: type[BaseModel]) -> list[dict[str, Any]]:
        query_schema = model.model_json_schema(mode="validation")
        return [
            {
                "name": name,
                "in": "query",
                "required": name in query_schema.get("required", []),
                "description": schema.get("description", ""),
                "schema": _without_null(schema),
            }
            for name, schema in query_schema["properties"].items()
        ]

    query_parameters = query_parameters_of(HistoryQuery)
    messages_path = {
        "parameters": [stream_id],
        "post": {
            "operationId": "sendChatMessage",
            "summary": "Send a chat message",
            "description": "Viewers are held to the stream's chat settings: while the chat is off "
            "a message is refused (403); one holding a blocked term is refused (422 CONTENT_BLOCKED) "
            "and not stored; in slow mode one sent too soon after the viewer's previous one is "
            "refused (429 with `Retry-After`), as is one over the rate limit.",
            "requestBody": {"required": True, **json_content(ref(SendMessageRequest, "validation"))},
            "responses": responses(
                201,
                "The message (on a retry, the original)",
                message,
                *(BadUserInput, Unauthenticated, Forbidden, NotFound, Conflict, ContentBlocked, RateLimited),
            ),
        },
        "get": {
            "operationId": "listChatMessages",
            "summary": "A page of chat history, oldest first",
            "description": "Without a cursor: the newest `limit` messages. With `before` or `after` "
            "(never both): the `limit` messages before or after that cursor. To follow the chat "
            "without a websocket, ask again with `after` = `pollCursor` after `pollingIntervalMillis`.",
            "parameters": query_parameters,
            "responses": responses(
                200, "The page", ref(MessagePage, "serialization"), BadUserInput, Unauthenticated, NotFound
            ),
        },
    }
    message_path = {
        "parameters": [
            stream_id,
            {
                "name": "messageId",
                "in": "path",
                "required": True,
                "description": "The message's id (`_id`).",
                "schema": {"type": "string"},
            },
        ],
        "delete": {
            "operationId": "deleteChatMessage",
            "summary": "Delete a chat message: its sender, the stream's owner, or a moderator",
            "description": "A moderator cannot delete the owner's or another moderator's message (403). "
            "The message stays in history as a tombstone: empty `content`, `deletedAt` set. Deleting "
            "a deleted message returns its tombstone again.",
            "parameters": query_parameters_of(DeleteMessageQuery),
            "responses": responses(
                200, "The deleted message (its tombstone)", message, BadUserInput, Unauthenticated, Forbidden, NotFound
            ),
        },
    }
    superlike_path = {
        "parameters": [stream_id],
        "post": {
            "operationId": "sendSuperlike",
            "summary": "Superlike a stream: once per user per stream",
            "description": "While the stream's chat is off, only its owner and moderators can (403).",
            "responses": responses(
                201, "The SUPERLIKE message", message, Unauthenticated, Forbidden, NotFound, Conflict
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gql_api live-stream chat REST API",
            "version": "1.0.0",
            "description": "The REST face of the chat service; GraphQL at /graphql serves the same data.",
            "license": LICENSE,
        },
        "servers": [{"url": API_PREFIX}],
        "security": [{"jwt": []}],
        "paths": {
            "/live-stream/{streamId}/chat/messages": messages_path,
            "/live-stream/{streamId}/chat/messages/{messageId}": message_path,
            "/live-stream/{streamId}/chat/superlike": superlike_path,
        },
        "components": {
            "schemas": dict(sorted(components.items())),
            "responses": dict(sorted(error_responses.items())),
            "headers": _HEADERS,
            "securitySchemes": {
                "jwt": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "The JWT, bare or as `Bearer <token>`.",
                }
            },
        },
    }
