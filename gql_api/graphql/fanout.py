"""Live events rendered once per distinct subscription, then sent as the same text to everyone.

Strawberry executes a subscription's selection set, builds a message and encodes it as JSON for
each subscriber and each event. With thousands of viewers on one stream that is thousands of
identical executions per chat message. Instead, the websocket handlers bind a ``LiveSink`` to
each subscription's task; the ``messageAdded`` resolver then renders each message through the
``EventRenderer`` (one execution and one encoding per distinct operation, variables and message)
and writes the finished frame to the socket itself. Validation, limits, authentication and
errors still go through Strawberry as usual.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from graphql import DocumentNode, GraphQLError
from graphql.execution.executor import Executor
from strawberry.types import Info

from gql_api import documents
from gql_api.graphql.types import ChatMessage

RenderKey = tuple[str, str | None, str]


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class LiveSink:
    """Where one websocket subscription's events go, and the frame text around each."""

    send_text: Callable[[str], Awaitable[None]]
    key: RenderKey
    prefix: str

    async def send(self, payload: str) -> None:
        await self.send_text(self.prefix + payload + "}")


_current_sink: ContextVar[LiveSink | None] = ContextVar("gql_api_live_sink", default=None)


def bind_sink(
    send_text: Callable[[str], Awaitable[None]],
    *,
    operation_id: str,
    frame_type: str,
    query: str,
    operation_name: str | None,
    variables: dict[str, Any] | None,
) -> None:
    """Bind the current task (one subscription) to its socket; called by the ws handlers."""
    key: RenderKey = (query, operation_name, _dumps(variables or {}))
    prefix = f'{{"id":{_dumps(operation_id)},"type":{_dumps(frame_type)},"payload":'
    _current_sink.set(LiveSink(send_text=send_text, key=key, prefix=prefix))


def current_sink() -> LiveSink | None:
    """The sink bound to this subscription, or None outside the websocket handlers."""
    return _current_sink.get()


class EventRenderer:
    """Renders a stored message as a subscription payload, once per operation and message."""

    def __init__(self, schema: Any, capacity: int = 4096) -> None:
        self._schema = schema
        self._capacity = capacity
        self._executors: OrderedDict[RenderKey, Executor] = OrderedDict()
        self._rendered: OrderedDict[tuple[RenderKey, str, int], str] = OrderedDict()
        self.executions = 0  # how many times a message was actually executed and encoded

    def render(self, key: RenderKey, info: Info, message: documents.ChatMessage) -> str:
        """The JSON payload (``{"data": ...}``) of ``message`` for the operation ``key``."""
        cache_key = (key, message.stream_id, message.seq)
        payload = self._rendered.get(cache_key)
        if payload is None:
            payload = self._execute(key, info, message)
            self._remember(self._rendered, cache_key, payload)
        return payload

    def _execute(self, key: RenderKey, info: Info, message: documents.ChatMessage) -> str:
        self.executions += 1
        executor = self._executors.get(key) or self._build(key, info)
        try:
            result = executor.build_per_event_executor(ChatMessage.from_document(message)).execute_operation(False)
        finally:
            # graphql-core 3.3 memoises sub-field collection per executor, keyed by the identity
            # of each event's fresh field list, in a dict every per-event copy shares: without
            # this, every rendered event stays in memory (about 1.5 KiB each; found by the soak).
            executor._relevant_sub_fields.clear()
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            errors: list[GraphQLError] = list(result.errors)
            self._schema.process_errors(errors)
            body["errors"] = [error.formatted for error in errors]
        return _dumps(body)

    def _build(self, key: RenderKey, info: Info) -> Executor:
        raw = info._raw_info
        document = DocumentNode(definitions=(raw.operation, *raw.fragments.values()))
        executor = Executor.build(
            self._schema._schema,
            document,
            context_value=None,  # message fields never read it, and it must not pin a connection
            raw_variable_values=json.loads(key[2]),
            operation_name=key[1],
        )
        if isinstance(executor, list):  # pragma: no cover - validated by Strawberry already
            raise executor[0]
        self._remember(self._executors, key, executor)
        return executor

    def _remember(self, cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        cache[key] = value
        if len(cache) > self._capacity:
            cache.popitem(last=False)
