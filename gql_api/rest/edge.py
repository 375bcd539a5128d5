"""Around every route under /api/v1: the body cap, input validation and the error envelope."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gql_api.bodylimit import capped_receive, declared_length
from gql_api.documents import utcnow
from gql_api.errors import BadUserInput, PayloadTooLarge, error_for_status, report
from gql_api.metrics import Metrics
from gql_api.rest.models import ErrorEnvelope

# The default of GRAPHQL_MAX_BODY_BYTES, which ``create_app`` passes in: one cap for both front ends.
MAX_BODY_BYTES = 64 * 1024


def _envelope(status_code: int, errors: list[str], headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorEnvelope(is_success=False, status_code=status_code, data=None, errors=errors, timestamp=utcnow())
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def error_response(exc: BaseException, where: str = "a REST request", metrics: Metrics | None = None) -> JSONResponse:
    """The envelope for any exception: ``errors[0]`` its summary, then the specifics; the
    unexpected are logged with their traceback and masked (``errors.report``). With
    ``metrics``, the error is counted by code."""
    if isinstance(exc, HTTPException):  # routing: unknown path, wrong method (with its Allow)
        error = error_for_status(exc.status_code)
        headers = {**error.headers, **(exc.headers or {})}
    else:
        error = report(exc, where)
        headers = error.headers
    if metrics is not None:
        metrics.error(error.code, "rest")
    errors = [error.summary]
    specifics = error.details or [error.message.removeprefix(f"{error.summary}: ")]
    errors += [text for text in specifics if text != error.summary]
    return _envelope(error.status_code, errors, headers or None)


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

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

        async def envelope(request: Request, exc: Exception) -> JSONResponse:
            return error_response(exc, f"{request.method} {request.scope['path']}", metrics)

        # The one catch: Starlette's exception handlers, which its routes use for what their
        # endpoints raise (in place of the enclosing app's) and this middleware for the rest,
        # routing's 404 and 405 included.
        self.app = ExceptionMiddleware(app, handlers={Exception: envelope, HTTPException: envelope})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"Request body too large: the limit is {_size(self.max_body_bytes)}")
        if (declared_length(scope) or 0) > self.max_body_bytes:  # also for routes that read no body
            await error_response(too_large, metrics=self.metrics)(scope, receive, send)
            return
        receive = capped_receive(scope, receive, self.max_body_bytes, too_large)
        await self.app(scope, receive, send)


def _size(limit: int) -> str:
    return f"{limit} bytes ({limit // 1024} KiB)" if limit % 1024 == 0 else f"{limit} bytes"
