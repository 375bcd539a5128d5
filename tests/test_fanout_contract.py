"""The fan-out's contract with the libraries it reaches into, and with any subscription field.

``gql_api.graphql.fanout`` renders a live event once per distinct operation by driving
graphql-core's ``Executor`` directly, and the websocket handlers override Strawberry's protocol
handlers. Those are internals: when an upgrade changes one, these tests fail and say which, rather
than subscriptions breaking at run time.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import graphql
import strawberry
from graphql.execution.executor import Executor
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types import Info

from gql_api.graphql.fanout import EventRenderer, bind_sink, fan_out
from gql_api.graphql.schema import build_schema


def _require(condition: bool, what: str) -> None:
    assert condition, f"fan-out contract broken: {what}; re-verify gql_api/graphql/fanout.py against this version"


def test_graphql_core_executor_internals_are_there() -> None:
    _require(callable(getattr(Executor, "build", None)), "graphql-core Executor.build is gone")
    _require(
        callable(getattr(Executor, "build_per_event_executor", None)),
        "graphql-core Executor.build_per_event_executor is gone",
    )
    _require(callable(getattr(Executor, "execute_operation", None)), "graphql-core Executor.execute_operation is gone")
    schema = build_schema()
    document = graphql.parse('subscription { messageAdded(streamId: "x") { id } }')
    executor = Executor.build(schema._schema, document)
    _require(isinstance(executor, Executor), "Executor.build no longer returns an Executor for a valid document")
    memo = getattr(executor, "_relevant_sub_fields", None)
    _require(
        memo is not None and callable(getattr(memo, "clear", None)),
        "Executor._relevant_sub_fields (the per-executor memo the renderer clears) is gone",
    )


def test_strawberry_internals_are_there() -> None:
    schema = build_schema()
    _require(isinstance(getattr(schema, "_schema", None), graphql.GraphQLSchema), "strawberry Schema._schema")
    _require("_raw_info" in inspect.signature(Info).parameters, "strawberry Info._raw_info")
    overridden = {
        BaseGraphQLTransportWSHandler: [
            "handle",
            "handle_connection_init",
            "handle_pong",
            "run_operation",
            "_send_result_stream",
        ],
        BaseGraphQLWSHandler: ["handle", "handle_connection_init", "handle_async_results"],
    }
    for base, names in overridden.items():
        for name in names:
            _require(callable(getattr(base, name, None)), f"strawberry {base.__name__}.{name}")
    _require(callable(getattr(schema, "_process_errors", None)), "strawberry Schema._process_errors")
    send_stream = inspect.signature(BaseGraphQLTransportWSHandler._send_result_stream).parameters
    _require(
        list(send_stream) == ["self", "operation", "result_source"],
        "BaseGraphQLTransportWSHandler._send_result_stream(operation, result_source), awaited before `complete`",
    )
    run_operation = inspect.signature(BaseGraphQLTransportWSHandler.run_operation).parameters
    _require(list(run_operation) == ["self", "operation"], "BaseGraphQLTransportWSHandler.run_operation(operation)")
    async_results = inspect.signature(BaseGraphQLWSHandler.handle_async_results).parameters
    _require(
        list(async_results) == ["self", "operation_id", "query", "operation_name", "variables"],
        "BaseGraphQLWSHandler.handle_async_results(operation_id, query, operation_name, variables)",
    )


# -- a second subscription field through the same path ---------------------------------------


@dataclass
class Tick:
    channel: str
    n: int


@strawberry.type
class TickType:
    channel: str
    n: int
    double: int


def _tick_to_graphql(tick: Tick) -> TickType:
    return TickType(channel=tick.channel, n=tick.n, double=tick.n * 2)


async def _ticks(channel: str, count: int) -> AsyncGenerator[Tick, None]:
    for n in range(count):
        yield Tick(channel, n)


@strawberry.type
class TickQuery:
    ok: bool = True


@strawberry.type
class TickSubscription:
    @strawberry.subscription
    async def ticks(self, info: strawberry.Info, channel: str, count: int) -> AsyncGenerator[TickType, None]:
        async for item in fan_out(
            info,
            _ticks(channel, count),
            renderer=info.context.renderer,
            to_graphql=_tick_to_graphql,
            identity=lambda tick: (tick.channel, tick.n),
        ):
            yield item  # type: ignore[misc]


TICK_SCHEMA = strawberry.Schema(query=TickQuery, subscription=TickSubscription)
TICKS = "subscription($c: String!) { ticks(channel: $c, count: 3) { n double } }"


async def _subscribe_bound(
    renderer: EventRenderer, operation_id: str, query: str, variables: dict[str, Any]
) -> list[str]:
    """Run one subscription as the websocket handlers do: a task bound to a sink."""
    frames: list[str] = []

    async def send_text(text: str) -> None:
        frames.append(text)
        await asyncio.sleep(0)  # a real socket write may suspend: let the other subscriber run

    async def run() -> None:
        bind_sink(
            send_text,
            operation_id=operation_id,
            frame_type="next",
            query=query,
            operation_name=None,
            variables=variables,
        )
        results = await TICK_SCHEMA.subscribe(
            query, variable_values=variables, context_value=SimpleNamespace(renderer=renderer)
        )
        assert not isinstance(results, graphql.ExecutionResult), results
        async for result in results:
            raise AssertionError(f"a bound subscription yielded a result itself: {result}")

    await asyncio.create_task(run())
    return frames


async def test_a_second_subscription_field_renders_once_per_operation_through_the_same_path() -> None:
    renderer = EventRenderer(TICK_SCHEMA)
    # Two live subscribers of one operation at once, as in a stream with many viewers.
    first, second = await asyncio.gather(
        _subscribe_bound(renderer, "a", TICKS, {"c": "red"}), _subscribe_bound(renderer, "b", TICKS, {"c": "red"})
    )

    assert [json.loads(frame) for frame in first] == [
        {"id": "a", "type": "next", "payload": {"data": {"ticks": {"n": n, "double": 2 * n}}}} for n in range(3)
    ]
    assert [json.loads(frame)["payload"] for frame in second] == [json.loads(f)["payload"] for f in first]
    assert renderer.executions == 3  # the second subscriber reused every rendered event


async def test_off_the_websocket_handlers_a_fanned_out_field_yields_as_usual() -> None:
    renderer = EventRenderer(TICK_SCHEMA)
    context = SimpleNamespace(renderer=renderer)
    results = await TICK_SCHEMA.subscribe(TICKS, variable_values={"c": "blue"}, context_value=context)
    assert not isinstance(results, graphql.ExecutionResult), results
    received = [result.data async for result in results]

    assert received == [{"ticks": {"n": n, "double": 2 * n}} for n in range(3)]
    assert renderer.executions == 0


def test_our_run_operation_is_still_strawberrys_with_the_live_phase_after_the_stream() -> None:
    """``GraphQLTransportWSHandler.run_operation`` repeats Strawberry's own (stream, send the
    results, ``complete``; its error handling), so that the live phase runs after the stream
    rather than inside it: an upgrade that changes Strawberry's must be looked at again."""
    from strawberry.subscriptions.protocols.graphql_transport_ws import handlers

    source = inspect.getsource(BaseGraphQLTransportWSHandler.run_operation)
    for step in (
        "await self.schema.stream(",
        "async with aclosing(result_source):",
        "await self._send_result_stream(operation, result_source)",
        'CompleteMessage(id=operation.id, type="complete")',
        "except _OperationStreamClosed:",
        "await self.handle_task_exception(error)",
        "self.operations.pop(operation.id, None)",
    ):
        _require(step in source, f"Strawberry's run_operation no longer does {step!r}")
    _require(hasattr(handlers, "_OperationStreamClosed"), "Strawberry's _OperationStreamClosed is gone")
