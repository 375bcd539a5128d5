"""Live events rendered once per distinct subscription, then sent as the same text to everyone.

Strawberry executes a subscription's selection set, builds a message and encodes it as JSON for
each subscriber and each event. With thousands of viewers on one stream that is thousands of
identical executions per chat message. This module does it once per distinct operation:

1. The websocket handlers (``websockets.py``) call :func:`bind_sink` when a subscription starts:
   its task then knows its socket, its operation id and the frame type of its subprotocol.
2. A subscription resolver hands its events to :func:`fan_out` and yields what it yields::

       async for item in fan_out(
           info, events, renderer=..., to_graphql=ChatMessage.from_document, identity=...
       ):
           yield item

   Over our websocket handlers ``fan_out`` renders each event through the shared
   :class:`EventRenderer` (one execution and one JSON encoding per distinct operation, variables
   and event), writes the finished frame to the socket itself and yields nothing. Anywhere else
   (HTTP multipart subscriptions, ``schema.subscribe`` in tests) it yields each event converted
   by ``to_graphql`` and Strawberry renders it as usual.
3. A handler that binds its sink with ``handoff=True`` (graphql-transport-ws) takes the live
   phase over: ``fan_out`` leaves it in ``LiveSink.live`` and returns at once, so Strawberry's
   stream (its execution context, extensions, graphql-core's executor and the resolver's
   generator) ends and is freed, and the handler runs ``live`` in the operation's task until the
   events end. An idle subscription then holds its events iterator and little else: about
   10 KiB less each (``bench/idle_memory.py``).

Validation, limits, authentication and errors still go through Strawberry. The renderer relies on
graphql-core and Strawberry internals (``Executor.build``, ``build_per_event_executor``,
``Executor._relevant_sub_fields``, ``Info._raw_info``, ``Schema._schema``): the versions are pinned
in ``pyproject.toml`` and ``tests/test_fanout_contract.py`` fails by name when one changes.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from graphql import (
    DocumentNode,
    ExecutionResult,
    FragmentDefinitionNode,
    GraphQLError,
    OperationDefinitionNode,
)
from graphql.execution.executor import Executor
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.types import Info

# An operation as the renderer knows it: (query text, operation name, variables as JSON).
RenderKey = tuple[str, str | None, str]
Event = TypeVar("Event")


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class LiveSink:
    """Where one websocket subscription's events go, and the frame text around each."""

    send_text: Callable[[str], Awaitable[None]]
    key: RenderKey
    prefix: str
    #: Writes a frame at once if that needs no waiting (True), else does nothing (False); None
    #: where the connection offers no such thing.
    send_now: Callable[[str], bool] | None = None
    #: Whether the handler runs the live phase itself, after Strawberry's stream has ended.
    handoff: bool = False
    #: The live phase, left here by :func:`fan_out` for a handler that takes it over.
    live: Callable[[], Awaitable[None]] | None = None

    def frame(self, payload: str) -> str:
        """The frame text around ``payload`` for this subscription."""
        return self.prefix + payload + "}"


_current_sink: ContextVar[LiveSink | None] = ContextVar("gql_api_live_sink", default=None)


def bind_sink(
    send_text: Callable[[str], Awaitable[None]],
    *,
    operation_id: str,
    frame_type: str,
    query: str,
    operation_name: str | None,
    variables: dict[str, Any] | None,
    handoff: bool = False,
    send_now: Callable[[str], bool] | None = None,
) -> LiveSink:
    """Bind the current task (one subscription) to its socket; called by the ws handlers.

    With ``handoff`` the handler promises to run :attr:`LiveSink.live` once Strawberry's stream
    has ended, and to report what it raises as Strawberry reports a failed event.
    """
    key: RenderKey = (query, operation_name, _dumps(variables or {}))
    prefix = f'{{"id":{_dumps(operation_id)},"type":{_dumps(frame_type)},"payload":'
    sink = LiveSink(send_text=send_text, key=key, prefix=prefix, handoff=handoff, send_now=send_now)
    _current_sink.set(sink)
    return sink


def current_sink() -> LiveSink | None:
    """The sink bound to this subscription, or None outside the websocket handlers."""
    return _current_sink.get()


@dataclass(frozen=True, slots=True)
class Source:
    """What the renderer needs of a subscription's resolve info to build its executor: the
    parsed operation (shared by every subscription of the same cached document), its fragments
    and the field's name. Kept for a subscription's lifetime instead of the resolve info, which
    holds on to the operation's graphql-core executor."""

    field_name: str
    operation: OperationDefinitionNode
    fragments: Mapping[str, FragmentDefinitionNode]

    @classmethod
    def of(cls, info: Info[Any, Any]) -> Source:
        raw = info._raw_info
        return cls(raw.field_name, raw.operation, raw.fragments)


class EventRenderer:
    """Renders an event as a subscription payload, once per operation and event."""

    def __init__(self, schema: Any, events_per_operation: int = 64, frames: int = 64) -> None:
        self._schema = schema
        self._events_per_operation = events_per_operation
        # Per operation with live subscribers (see ``acquire``): its executor, and its latest
        # rendered events (subscribers of one operation render the same event at about the
        # same time, so a short window is enough to share it).
        self._executors: dict[RenderKey, Executor[Any]] = {}
        self._rendered: dict[RenderKey, OrderedDict[Hashable, str]] = {}
        self._subscribers: dict[RenderKey, int] = {}
        self._keys: dict[RenderKey, RenderKey] = {}  # each operation's key, as ``acquire`` returns it
        # The latest frame texts, by their prefix (the operation id and frame type) and
        # payload: subscribers whose clients use the same operation id (graphql-ws clients
        # number theirs "1", "2", ...) get the very same text object, which the server's
        # websocket protocol then frames (and compresses) once for all (``wsprotocol.py``).
        self._frames: dict[tuple[str, str], str] = {}
        self._frames_size = frames
        # The event rendered last, for which operation, and its payload: a delivery renders one
        # event for each of its subscribers in turn (``render_event``).
        self._last: tuple[object, RenderKey | None, str] = (None, None, "")
        self._last_frame: tuple[str, str, str] = ("", "", "")  # prefix, payload, frame text
        self.executions = 0  # how many times an event was actually executed and encoded

    def acquire(self, key: RenderKey) -> RenderKey:
        """A subscription of the operation ``key`` starts sending through this renderer: the key
        to use from now on, one object for every subscription of the operation (so the next
        subscriber of an event is recognised by identity, see ``render_event``)."""
        key = self._keys.setdefault(key, key)
        self._subscribers[key] = self._subscribers.get(key, 0) + 1
        return key

    def release(self, key: RenderKey) -> None:
        """A subscription of ``key`` ended: with it the operation's last, forget the operation.

        So what the renderer holds (each operation's document, through its executor, and its
        rendered events) is bounded by the live subscriptions, and a client that leaves leaves
        nothing behind, however large or many its documents were.
        """
        left = self._subscribers.get(key, 0) - 1
        if left > 0:
            self._subscribers[key] = left
            return
        self._subscribers.pop(key, None)
        self._keys.pop(key, None)
        self._executors.pop(key, None)
        self._rendered.pop(key, None)
        if self._last[1] == key:
            self._last = (None, None, "")

    def render(self, key: RenderKey, source: Source, identity: Hashable, root: Callable[[], object]) -> str:
        """The JSON payload (``{"data": ...}``) of the event ``identity`` for the operation ``key``.

        ``source`` is the operation as the subscription's resolver saw it (see
        :meth:`Source.of`); ``root`` builds the event as the subscription field's GraphQL type.
        Both are used only when this operation has not rendered this event yet.
        """
        rendered = self._rendered.setdefault(key, OrderedDict())
        payload = rendered.get(identity)
        if payload is None:
            payload = rendered[identity] = self._execute(key, source, root())
            if len(rendered) > self._events_per_operation:
                rendered.popitem(last=False)
        return payload

    def render_event(
        self,
        key: RenderKey,
        source: Source,
        event: Event,
        to_graphql: Callable[[Event], object],
        identity: Callable[[Event], Hashable],
    ) -> str:
        """``render`` for ``event`` itself: the same event asked for again by the next
        subscriber of the same operation is answered without naming it again."""
        last = self._last
        if last[0] is event and last[1] is key:
            return last[2]
        payload = self.render(key, source, (source.field_name, identity(event)), partial(to_graphql, event))
        self._last = (event, key, payload)
        return payload

    def frame(self, sink: LiveSink, payload: str) -> str:
        """``payload`` framed for ``sink``: one text object for every sink with the same prefix."""
        prefix = sink.prefix
        last = self._last_frame
        if last[1] is payload and last[0] == prefix:  # the next subscriber of the same event
            return last[2]
        text = self._framed(sink, payload)
        self._last_frame = (prefix, payload, text)
        return text

    def _framed(self, sink: LiveSink, payload: str) -> str:
        key = (sink.prefix, payload)
        text = self._frames.get(key)
        if text is None:
            if len(self._frames) >= self._frames_size:
                del self._frames[next(iter(self._frames))]  # the oldest
            text = self._frames[key] = sink.frame(payload)
        return text

    def _execute(self, key: RenderKey, source: Source, root: object) -> str:
        self.executions += 1
        executor = self._executors.get(key) or self._build(key, source)
        try:
            result = executor.build_per_event_executor(root).execute_operation(False)
        finally:
            # graphql-core 3.3 memoises sub-field collection per executor, keyed by the identity
            # of each event's fresh field list, in a dict every per-event copy shares: without
            # this, every rendered event stays in memory (about 1.5 KiB each; found by the soak).
            executor._relevant_sub_fields.clear()
        # Event fields resolve synchronously (no awaitables, no @defer/@stream in subscriptions).
        assert isinstance(result, ExecutionResult)
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            errors: list[GraphQLError] = list(result.errors)
            self._schema.process_errors(errors)
            body["errors"] = [error.formatted for error in errors]
        return _dumps(body)

    def _build(self, key: RenderKey, source: Source) -> Executor[Any]:
        document = DocumentNode(definitions=(source.operation, *source.fragments.values()))
        executor = Executor.build(
            self._schema._schema,
            document,
            context_value=None,  # event fields never read it, and it must not pin a connection
            raw_variable_values=json.loads(key[2]),
            operation_name=key[1],
        )
        if isinstance(executor, list):  # pragma: no cover - validated by Strawberry already
            raise executor[0]
        self._executors[key] = executor
        return executor


async def fan_out(
    info: Info[Any, Any],
    events: AsyncIterator[Event],
    *,
    renderer: EventRenderer,
    to_graphql: Callable[[Event], object],
    identity: Callable[[Event], Hashable],
) -> AsyncGenerator[object, None]:
    """The body of a subscription resolver whose events are shared by many subscribers.

    ``identity`` names an event across subscribers (for chat messages: stream and sequence
    number): two subscriptions with the same operation and variables get the same rendered
    frame for the same identity. See the module docstring for when this yields, when it sends
    frames itself and when it hands the sending over to the handler.
    """
    sink = current_sink()
    if sink is None:
        async for event in events:
            yield to_graphql(event)
        return
    live = partial(_deliver, sink, Source.of(info), events, renderer, to_graphql, identity)
    if sink.handoff:
        sink.live = live
        return
    await live()


async def _deliver(
    sink: LiveSink,
    source: Source,
    events: AsyncIterator[Event],
    renderer: EventRenderer,
    to_graphql: Callable[[Event], object],
    identity: Callable[[Event], Hashable],
) -> None:
    """Send every event to the sink, rendered once per operation and event, until they end.

    Events that can (a :class:`~gql_api.hub.Feed`'s live entries, on a connection that can
    write without waiting) are sent by the delivery itself, in one pass over every subscriber,
    without waking this task; the rest come through the loop.
    """
    sink.key = renderer.acquire(sink.key)
    listen = getattr(events, "listen", None)
    if listen is not None and sink.send_now is not None:
        listen(_LiveSend(sink, sink.send_now, source, renderer, to_graphql, identity))
    try:
        async for event in events:
            payload = renderer.render_event(sink.key, source, event, to_graphql, identity)
            await sink.send_text(renderer.frame(sink, payload))
    except WebSocketDisconnected:
        return  # the client went away mid-send: nothing to report to anyone
    finally:
        renderer.release(sink.key)
        # Leave the hub now, not when the collector finds the suspended generator.
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


class _LiveSend(Generic[Event]):
    """``_deliver``'s loop body without its wait, for a :class:`~gql_api.hub.Feed`'s consumer:
    True once the event's frame is written, False to leave it to the loop."""

    __slots__ = ("identity", "renderer", "send_now", "sink", "source", "to_graphql")

    def __init__(
        self,
        sink: LiveSink,
        send_now: Callable[[str], bool],
        source: Source,
        renderer: EventRenderer,
        to_graphql: Callable[[Event], object],
        identity: Callable[[Event], Hashable],
    ) -> None:
        self.sink, self.send_now, self.source, self.renderer = sink, send_now, source, renderer
        self.to_graphql, self.identity = to_graphql, identity

    def __call__(self, event: Event) -> bool:
        sink, renderer = self.sink, self.renderer
        try:
            payload = renderer.render_event(sink.key, self.source, event, self.to_graphql, self.identity)
        except Exception:  # noqa: BLE001 - the loop renders it again, and reports what it raises
            return False
        return self.send_now(renderer.frame(sink, payload))
