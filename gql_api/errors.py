"""The one error tree: every error a client can cause has a code, an HTTP-style status and a
summary, and this tree is the table every front end reads them from.

Each ``ApiError`` subclass that declares its own ``code`` is one row (``ERRORS``, looked up
with ``error_for_status``): the GraphQL formatter, the REST envelope, the OpenAPI document and
the README's tables all derive from it. ``report`` is the one place an exception becomes what
a client is told, and is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

logger = logging.getLogger(__name__)


class GqlApiError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigurationError(GqlApiError):
    """The service cannot start with the configuration it was given."""


_TABLE: dict[str, type[ApiError]] = {}  # code: class, in declaration order


def _register(error_class: type[ApiError]) -> None:
    taken = _TABLE.setdefault(error_class.code, error_class)
    if taken is not error_class:
        raise TypeError(f"{error_class.__name__}: {error_class.code} is already {taken.__name__}'s code")


class ApiError(GqlApiError):
    """An error the client caused or must know about; shown to it as ``code`` and ``statusCode``."""

    code: ClassVar[str] = "INTERNAL_SERVER_ERROR"
    status_code: ClassVar[int] = 500
    summary: ClassVar[str] = "Internal server error"  # the message when none is given

    def __init__(self, message: str | None = None, *, details: list[str] | None = None) -> None:
        self.message = message or self.summary
        self.details = details or []
        super().__init__(self.message)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:  # a subclass without its own code is a special case of a row
            _register(cls)

    @property
    def extensions(self) -> dict[str, object]:
        return {"code": self.code, "statusCode": self.status_code}

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error when it is a response's status."""
        return {}


_register(ApiError)


class BadUserInput(ApiError):
    code = "BAD_USER_INPUT"
    status_code = 400
    summary = "Validation failed"


class Unauthenticated(ApiError):
    code = "UNAUTHENTICATED"
    status_code = 401
    summary = "Authentication required"


class Forbidden(ApiError):
    code = "FORBIDDEN"
    status_code = 403
    summary = "Insufficient permissions"


class NotFound(ApiError):
    code = "NOT_FOUND"
    status_code = 404
    summary = "Resource not found"


class Conflict(ApiError):
    code = "CONFLICT"
    status_code = 409
    summary = "Resource already exists or cannot be changed in its current state"


class MethodNotAllowed(ApiError):
    """A method the resource does not take; ``allow`` lists those it does (RFC 9110 requires it)."""

    code = "METHOD_NOT_ALLOWED"
    status_code = 405
    summary = "Method not allowed"

    def __init__(self, message: str | None = None, *, allow: str = "GET, POST") -> None:
        super().__init__(message)
        self.allow = allow

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class PayloadTooLarge(ApiError):
    code = "PAYLOAD_TOO_LARGE"
    status_code = 413
    summary = "Request body too large"


class ContentBlocked(ApiError):
    """A message holding a term its stream's chat blocks. The message does not say which term:
    the list is the owner's and the moderators' to see."""

    code = "CONTENT_BLOCKED"
    status_code = 422
    summary = "Content blocked"


class RateLimited(ApiError):
    """Too many messages too fast; ``retry_after`` says, in whole seconds, when to try again."""

    code = "RATE_LIMITED"
    status_code = 429
    summary = "Rate limit exceeded: too many messages, slow down"

    def __init__(self, message: str | None = None, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def extensions(self) -> dict[str, object]:
        return {**super().extensions, "retryAfter": self.retry_after}

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceUnavailable(ApiError):
    code = "SERVICE_UNAVAILABLE"
    status_code = 503
    summary = "Service temporarily unavailable, try again"


class SubscriberTooSlow(ApiError):
    """A live subscriber fell too far behind; it should resubscribe (with ``after`` once available)."""

    code = "SUBSCRIBER_TOO_SLOW"
    status_code = 503
    summary = "Subscriber fell behind the live stream; resubscribe to continue"


ERRORS: Mapping[str, type[ApiError]] = MappingProxyType(_TABLE)
"""Every code a client can see, with the class that carries its status and summary."""


def error_for_status(status_code: int, message: str | None = None) -> ApiError:
    """An HTTP refusal as our error: the first declared with that status, else BAD_USER_INPUT."""
    error_class = next((c for c in ERRORS.values() if c.status_code == status_code), BadUserInput)
    return error_class(message or None)


def as_api_error(exc: BaseException) -> ApiError:
    """What a client is told about an exception: ours as they are, the database's as 503, else 500."""
    from pymongo.errors import ConnectionFailure, PyMongoError

    if isinstance(exc, ApiError):
        return exc
    # Unreachable, or too slow to answer in time: either way the client should retry later.
    if isinstance(exc, ConnectionFailure) or (isinstance(exc, PyMongoError) and exc.timeout):
        return ServiceUnavailable()
    return ApiError()


def report(exc: BaseException, where: object) -> ApiError:
    """What a client is told about ``exc`` (see ``as_api_error``), logged once, here.

    Ours are the client's business and are not logged, unless INTERNAL_SERVER_ERROR; the
    database failing is a warning without traceback; anything else is a bug, logged as an
    error with its traceback and masked. ``where`` names the request or operation in the log.
    """
    error = as_api_error(exc)
    if error.code == ApiError.code:
        logger.error("Unexpected error in %s", where, exc_info=exc)
    elif error is not exc:
        logger.warning("%s in %s: %r", error.code, where, exc)
    return error
