"""Logging: a request id on every line, and JSON lines as an option (``LOG_FORMAT=json``).

``RequestIdMiddleware`` gives each HTTP request and each websocket connection an id (the
client's ``X-Request-Id`` when it is sensible, else a new one), keeps it in a context variable
for everything that runs on its behalf, and echoes it as the ``X-Request-Id`` response header
(on a websocket, in the handshake's response). ``RequestIdFilter`` puts it on every log record
as ``request_id``; ``JsonFormatter`` writes one JSON object per line.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LogFormat = Literal["text", "json"]

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_HEADER_NAME = REQUEST_ID_HEADER.encode()
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
# What a client's id may look like: it goes into every log line, so no spaces, no control
# characters, no newlines (forged log lines), and not a whole page of text.
_ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

#: The id of the request (or websocket connection) the current code runs for; None outside one.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Assigns each request and websocket connection an id, and echoes it to the client.

    ``on_websocket_close`` sees the code of every close frame the app sends: the websocket
    close-code metric is counted here, in the one wrapper every frame already passes through.
    """

    def __init__(self, app: ASGIApp, on_websocket_close: Callable[[int], None] | None = None) -> None:
        self.app = app
        self.on_websocket_close = on_websocket_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token, send = identify(scope, send, self.on_websocket_close)
        try:
            await self.app(scope, receive, send)
        finally:
            request_id.reset(token)


def identify(
    scope: Scope, send: Send, on_websocket_close: Callable[[int], None] | None = None
) -> tuple[Token[str | None], Send]:
    """What ``RequestIdMiddleware`` does for one HTTP request or websocket connection, for an app
    that serves one without it: sets ``request_id`` and returns the token to reset it with, and
    the ``send`` that echoes the id (and reports each websocket close code to
    ``on_websocket_close``)."""
    given = _header(scope, _REQUEST_ID_HEADER_NAME)
    rid = given if given is not None and _ACCEPTED_ID.fullmatch(given) else new_request_id()
    return request_id.set(rid), _SendWithId(send, (_REQUEST_ID_HEADER_NAME, rid.encode()), on_websocket_close)


class _SendWithId:
    """``send``, adding the request id's header to the response (or the websocket's accept).

    Every websocket frame may pass through here: a plain call handing back the inner send's
    awaitable, not a coroutine of its own, costs a tenth as much per frame; an object with
    slots, not a closure, is a third of the memory an open connection keeps for it.
    """

    __slots__ = ("header", "on_close", "send")

    def __init__(self, send: Send, header: tuple[bytes, bytes], on_close: Callable[[int], None] | None) -> None:
        self.send = send
        self.header = header
        self.on_close = on_close

    def __call__(self, message: Message) -> Awaitable[None]:
        kind = message["type"]
        if kind == "http.response.start" or kind == "websocket.accept":
            message = {**message, "headers": [*message.get("headers", ()), self.header]}
        elif kind == "websocket.close" and self.on_close is not None:
            self.on_close(int(message.get("code", 1000)))
        return self.send(message)


def _header(scope: Scope, name: bytes) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (None outside a request) to every record of the handler it is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_handler(log_format: LogFormat, stream: Any = None, *, with_pid: bool = False) -> logging.Handler:
    """A handler writing ``log_format`` lines, each with its request id, to ``stream`` (stderr).

    ``with_pid``: text lines say which process wrote them (``serve --workers N``); JSON lines
    always carry ``pid``.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    text_format = TEXT_FORMAT.replace("%(name)s", "[%(process)d] %(name)s") if with_pid else TEXT_FORMAT
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(text_format))
    return handler


def configure_logging(log_format: LogFormat, level: int = logging.INFO, *, with_pid: bool = False) -> None:
    """Send every log record (uvicorn's included, see ``uvicorn_log_config``) to one handler."""
    logging.basicConfig(level=level, handlers=[log_handler(log_format, with_pid=with_pid)], force=True)


def uvicorn_log_config(log_format: LogFormat, *, with_pid: bool = False) -> dict[str, Any] | None:
    """uvicorn's own logging setup for ``log_format``: its default in text (with the process id
    when ``with_pid``); in JSON none, so its loggers propagate to the root handler that
    ``configure_logging`` installed."""
    if log_format == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    if not with_pid:
        return LOGGING_CONFIG
    config = copy.deepcopy(LOGGING_CONFIG)
    for formatter in config["formatters"].values():
        formatter["fmt"] = formatter["fmt"].replace("%(levelprefix)s ", "%(levelprefix)s [%(process)d] ")
    return config
