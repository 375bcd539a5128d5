"""Every error reaches the client with a code and statusCode; the unexpected are logged and masked."""

from __future__ import annotations

import logging

import pytest
from graphql import GraphQLError
from pymongo.errors import AutoReconnect, ExecutionTimeout, NetworkTimeout, OperationFailure, ServerSelectionTimeoutError

from gql_api.errors import ApiError, BadUserInput, Conflict, Forbidden, NotFound, Unauthenticated, as_api_error
from gql_api.graphql.schema import build_schema


def _resolver_error(exc: Exception) -> GraphQLError:
    return GraphQLError(str(exc), path=["sendChatMessage"], original_error=exc)


@pytest.mark.allow_error_logs
def test_an_unexpected_exception_is_logged_with_its_traceback_and_masked(caplog):
    try:
        raise RuntimeError("secret connection string mongodb://admin:hunter2@db")
    except RuntimeError as exc:
        error = _resolver_error(exc)

    with caplog.at_level(logging.ERROR, logger="gql_api.errors"):
        build_schema().process_errors([error])

    assert error.formatted["message"] == "Internal server error"
    assert error.formatted["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "statusCode": 500}
    assert "hunter2" not in str(error.formatted)
    [record] = caplog.records
    assert record.exc_info is not None and "hunter2" in str(record.exc_info[1])


def test_a_database_outage_is_service_unavailable(caplog):
    error = _resolver_error(ServerSelectionTimeoutError("No servers found yet"))
    build_schema().process_errors([error])
    assert error.formatted["extensions"] == {"code": "SERVICE_UNAVAILABLE", "statusCode": 503}
    assert "No servers" not in error.formatted["message"]


@pytest.mark.parametrize(
    "exc",
    [AutoReconnect("connection reset"), NetworkTimeout("timed out"), ExecutionTimeout("operation exceeded time limit", 50)],
)
def test_a_lost_or_timed_out_database_call_is_service_unavailable(exc):
    assert as_api_error(exc).extensions == {"code": "SERVICE_UNAVAILABLE", "statusCode": 503}


def test_another_database_error_is_internal():
    assert as_api_error(OperationFailure("bad query", 2)).code == "INTERNAL_SERVER_ERROR"


@pytest.mark.parametrize(
    ("exc", "code", "status"),
    [
        (BadUserInput(), "BAD_USER_INPUT", 400),
        (Unauthenticated(), "UNAUTHENTICATED", 401),
        (Forbidden(), "FORBIDDEN", 403),
        (NotFound(), "NOT_FOUND", 404),
        (Conflict(), "CONFLICT", 409),
    ],
)
def test_client_errors_keep_their_message_and_carry_code_and_status(exc: ApiError, code, status):
    error = _resolver_error(exc)
    build_schema().process_errors([error])
    assert error.formatted["extensions"] == {"code": code, "statusCode": status}
    assert error.formatted["message"] == exc.message
    assert as_api_error(exc) is exc
