"""The OpenAPI 3.1 document, its schemas generated from the models the endpoints use."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from gql_api.rest.models import ErrorEnvelope, HistoryQuery, Message, MessagePage, SendMessageRequest

API_PREFIX = "/api/v1"
REF_TEMPLATE = "#/components/schemas/{model}"

LICENSE = {"name": "MIT", "identifier": "MIT"}  # the repository's LICENSE file

_ERROR_RESPONSES = {  # status: (name in components.responses, description)
    400: ("ValidationFailed", "Malformed JSON, a missing or invalid field, a bad cursor or limit"),
    401: ("AuthenticationRequired", "No token, or a bad or expired one"),
    403: ("Forbidden", "Insufficient permissions: the sender is banned from this stream's chat"),
    404: ("NotFound", "No live stream has this id"),
    405: ("MethodNotAllowed", "The path does not take this method; `Allow` lists those it takes"),
    409: (
        "Conflict",
        "The stream has ended, a second superlike, or a clientMessageId reused with other content",
    ),
    413: ("PayloadTooLarge", "The request body is over 64 KiB"),
    429: ("RateLimited", "Too many messages from this user in this stream; `Retry-After` says when to try again"),
    500: ("InternalServerError", "Something unexpected; the details are logged, never shown"),
    503: ("ServiceUnavailable", "The database is unreachable; try again"),
}
# Every operation can answer these: a wrong method (405), a body over the cap, which the edge
# refuses before routing, even where the operation reads none (413), and the unexpected (500, 503).
_ANY_OPERATION = (405, 413, 500, 503)
_ERROR_HEADERS = {  # status: {header name: name in components.headers}
    405: {"Allow": "Allow"},
    429: {"Retry-After": "RetryAfter"},
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

    def responses(success: int, description: str, schema: dict[str, Any], *errors: int) -> dict[str, Any]:
        result = {str(success): {"description": description, **json_content(schema)}}
        for status in sorted({*errors, *_ANY_OPERATION}):
            result[str(status)] = {"$ref": f"#/components/responses/{_ERROR_RESPONSES[status][0]}"}
        return result

    def error_response(status: int, description: str) -> dict[str, Any]:
        response: dict[str, Any] = {"description": description}
        if headers := _ERROR_HEADERS.get(status):
            response["headers"] = {
                name: {"$ref": f"#/components/headers/{component}"} for name, component in headers.items()
            }
        return {**response, **json_content(error)}

    stream_id = {
        "name": "streamId",
        "in": "path",
        "required": True,
        "description": "The live stream's id.",
        "schema": {"type": "string"},
    }
    query_schema = HistoryQuery.model_json_schema(mode="validation")
    query_parameters = [
        {
            "name": name,
            "in": "query",
            "required": name in query_schema.get("required", []),
            "description": schema.get("description", ""),
            "schema": _without_null(schema),
        }
        for name, schema in query_schema["properties"].items()
    ]
    messages_path = {
        "parameters": [stream_id],
        "post": {
            "operationId": "sendChatMessage",
            "summary": "Send a chat message",
            "requestBody": {"required": True, **json_content(ref(SendMessageRequest, "validation"))},
            "responses": responses(
                201, "The message (on a retry, the original)", message, 400, 401, 403, 404, 409, 429
            ),
        },
        "get": {
            "operationId": "listChatMessages",
            "summary": "A page of chat history, oldest first",
            "description": "Without a cursor: the newest `limit` messages. With `before` or `after` "
            "(never both): the `limit` messages before or after that cursor. To follow the chat "
            "without a websocket, ask again with `after` = `pollCursor` after `pollingIntervalMillis`.",
            "parameters": query_parameters,
            "responses": responses(200, "The page", ref(MessagePage, "serialization"), 400, 401, 404),
        },
    }
    superlike_path = {
        "parameters": [stream_id],
        "post": {
            "operationId": "sendSuperlike",
            "summary": "Superlike a stream: once per user per stream",
            "responses": responses(201, "The SUPERLIKE message", message, 401, 403, 404, 409),
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
            "/live-stream/{streamId}/chat/superlike": superlike_path,
        },
        "components": {
            "schemas": dict(sorted(components.items())),
            "responses": {
                name: error_response(status, description) for status, (name, description) in _ERROR_RESPONSES.items()
            },
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
