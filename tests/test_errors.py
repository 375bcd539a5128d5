"""Every error reaches the client with a code and statusCode; the unexpected are logged and masked."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from graphql import GraphQLError
from pymongo.errors import (
    AutoReconnect,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from gql_api.errors import (
    ERRORS,
    ApiError,
    BadUserInput,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Unauthenticated,
    as_api_error,
    error_for_status,
    report,
)
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
    [
        AutoReconnect("connection reset"),
        NetworkTimeout("timed out"),
        ExecutionTimeout("operation exceeded time limit", 50),
    ],
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


# -- errors.py is the table every front end and the README derive from ---------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_errors_table_lists_every_code_with_its_status():
    rows = re.findall(r"^\| `([A-Z_]+)` \| (\d{3}) \|", _readme_section("Errors"), flags=re.MULTILINE)
    assert {code: int(status) for code, status in rows} == {code: error.status_code for code, error in ERRORS.items()}
    assert len(rows) == len(ERRORS)


def test_the_table_holds_each_class_that_declares_a_code():
    assert ERRORS["CONFLICT"] is Conflict and ERRORS["INTERNAL_SERVER_ERROR"] is ApiError
    assert [ERRORS[code].summary for code in ("BAD_USER_INPUT", "NOT_FOUND")] == [
        "Validation failed",
        "Resource not found",
    ]

    class StreamEnded(Conflict):  # a special case of a row, not a row
        pass

    assert "StreamEnded" not in {error.__name__ for error in ERRORS.values()}
    with pytest.raises(TypeError, match="CONFLICT is already Conflict's code"):

        class AnotherConflict(ApiError):
            code = "CONFLICT"


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "Unable to parse request body as JSON", BadUserInput),
        (404, "Not Found", NotFound),
        (405, "GraphQL only supports GET and POST requests.", MethodNotAllowed),
        (413, "", PayloadTooLarge),
        (503, "", ServiceUnavailable),  # the first declared with that status
        (415, "Unsupported media type", BadUserInput),  # none has it: the request is wrong
    ],
)
def test_an_http_refusal_becomes_the_error_with_its_status(status, message, expected):
    error = error_for_status(status, message)
    assert type(error) is expected
    assert error.message == (message or expected.summary)


def test_the_headers_an_error_needs_go_with_it():
    assert MethodNotAllowed().headers == {"Allow": "GET, POST"}
    assert RateLimited(retry_after=7).headers == {"Retry-After": "7"}
    assert NotFound().headers == {}


def test_report_logs_ours_not_at_all_the_database_as_a_warning(caplog):
    ours = ServiceUnavailable()
    outage = ServerSelectionTimeoutError("No servers found yet")
    with caplog.at_level(logging.INFO, logger="gql_api"):
        assert report(ours, "here") is ours
        assert report(outage, "there").code == "SERVICE_UNAVAILABLE"
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None and "there" in record.getMessage()
