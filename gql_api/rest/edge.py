"""Around every route under /api/v1: the body cap, input validation and the error envelope."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from gql_api.bodylimit import capped_receive, declared_length
from gql_api.documents import utcnow
from gql_api.errors import ApiError, BadUserInput, PayloadTooLarge, RateLimited, as_api_error
from gql_api.metrics import Metrics
from gql_api.rest.models import ErrorEnvelope

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


_TOO_LARGE = f"Request body too large: the limit is {MAX_BODY_BYTES} bytes (64 KiB)"


_HTTP_MESSAGES = {404: "Resource not found", 405: "Method not allowed"}
_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def _envelope(status_code: int, errors: list[str], headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorEnvelope(
        is_success=False, status_code=status_code, data=None, errors=errors, timestamp=utcnow()
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def error_response(
    exc: BaseException, where: str = "a REST request", metrics: Metrics | None = None
) -> JSONResponse:
    """The envelope for any exception; the unexpected are logged with their traceback and masked.
    With ``metrics``, the error is counted by code."""
    if isinstance(exc, HTTPException):  # routing: unknown path, wrong method
        if metrics is not None:
            metrics.error(_HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}"), "rest")
        message = _HTTP_MESSAGES.get(exc.status_code, exc.detail)
        return _envelope(exc.status_code, [message], dict(exc.headers or {}))
    error = as_api_error(exc)
    if metrics is not None:
        metrics.error(error.code, "rest")
    if error is not exc:
        if error.code == ApiError.code:
            logger.error("Unexpected error in %s", where, exc_info=exc)
        else:
            logger.warning("%s in %s: %r", error.code, where, exc)
    errors = [error.default_message]
    specifics = error.details or [error.message.removeprefix(f"{error.default_message}: ")]
    errors += [text for text in specifics if text != error.default_message]
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, RateLimited) else None
    return _envelope(error.status_code, errors, headers)


ModelT = TypeVar("ModelT", bound=BaseModel)


def validate(model: type[ModelT], where: str, *, json: bytes | None = None, data: Any = None) -> ModelT:
    """Validate input with a pydantic model; BadUserInput naming each bad field and why."""
    try:
        return model.model_validate_json(json) if json is not None else model.model_validate(data)
    except ValidationError as exc:
        details = []
        for problem in exc.errors(include_url=False, include_input=False):
            location = ".".join(str(part) for part in (where, *problem["loc"]))
            details.append(f"{location}: {problem['msg']}")
        raise BadUserInput(details=details) from exc


class RestEdge:
    """Around every route under /api/v1: oversized bodies refused early, every failure enveloped."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(_TOO_LARGE)
        if (declared_length(scope) or 0) > MAX_BODY_BYTES:  # also for routes that read no body
            await error_response(too_large, metrics=self.metrics)(scope, receive, send)
            return
        receive = capped_receive(scope, receive, MAX_BODY_BYTES, too_large)
        started = False

        async def tracking_send(message: AsgiMessage) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            response = error_response(exc, f"{scope['method']} {scope['path']}", self.metrics)
            await response(scope, receive, send)
