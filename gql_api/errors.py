"""The one error tree: every error a client can cause has a code and an HTTP-style status."""

from __future__ import annotations


class GqlApiError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigurationError(GqlApiError):
    """The service cannot start with the configuration it was given."""


class ApiError(GqlApiError):
    """An error the client caused or must know about; shown to it as ``code`` and ``statusCode``."""

    code: str = "INTERNAL_SERVER_ERROR"
    status_code: int = 500
    default_message: str = "Internal server error"

    def __init__(self, message: str | None = None, *, details: list[str] | None = None) -> None:
        self.message = message or self.default_message
        self.details = details or []
        super().__init__(self.message)

    @property
    def extensions(self) -> dict[str, object]:
        return {"code": self.code, "statusCode": self.status_code}


class BadUserInput(ApiError):
    code = "BAD_USER_INPUT"
    status_code = 400
    default_message = "Validation failed"


class Unauthenticated(ApiError):
    code = "UNAUTHENTICATED"
    status_code = 401
    default_message = "Authentication required"


class Forbidden(ApiError):
    code = "FORBIDDEN"
    status_code = 403
    default_message = "Insufficient permissions"


class NotFound(ApiError):
    code = "NOT_FOUND"
    status_code = 404
    default_message = "Resource not found"


class Conflict(ApiError):
    code = "CONFLICT"
    status_code = 409
    default_message = "Resource already exists or cannot be changed in its current state"


class MethodNotAllowed(ApiError):
    code = "METHOD_NOT_ALLOWED"
    status_code = 405
    default_message = "Method not allowed: GraphQL takes GET (queries only) and POST"


class PayloadTooLarge(ApiError):
    code = "PAYLOAD_TOO_LARGE"
    status_code = 413
    default_message = "Request body too large"


class RateLimited(ApiError):
    """Too many messages too fast; ``retry_after`` says, in whole seconds, when to try again."""

    code = "RATE_LIMITED"
    status_code = 429
    default_message = "Rate limit exceeded: too many messages, slow down"

    def __init__(self, message: str | None = None, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def extensions(self) -> dict[str, object]:
        return {**super().extensions, "retryAfter": self.retry_after}


class ServiceUnavailable(ApiError):
    code = "SERVICE_UNAVAILABLE"
    status_code = 503
    default_message = "Service temporarily unavailable, try again"


class SubscriberTooSlow(ApiError):
    """A live subscriber fell too far behind; it should resubscribe (with ``after`` once available)."""

    code = "SUBSCRIBER_TOO_SLOW"
    status_code = 503
    default_message = "Subscriber fell behind the live stream; resubscribe to continue"


def as_api_error(exc: BaseException) -> ApiError:
    """What a client is told about an exception: ours as they are, the database's as 503, else 500."""
    from pymongo.errors import ConnectionFailure, PyMongoError

    if isinstance(exc, ApiError):
        return exc
    # Unreachable, or too slow to answer in time: either way the client should retry later.
    if isinstance(exc, ConnectionFailure) or (isinstance(exc, PyMongoError) and exc.timeout):
        return ServiceUnavailable()
    return ApiError()
