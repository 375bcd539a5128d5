"""GraphQL request limits: depth, aliases, tokens, body size and batching, over HTTP and websockets."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import weakref
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import strawberry
import websockets
from graphql import DocumentNode, get_introspection_query, parse
from strawberry.extensions import SchemaExtension
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema import schema as strawberry_schema
from strawberry.types import ExecutionContext

from gql_api.app import create_app
from gql_api.graphql.limits import CachedDocument, DocumentCache, LimitsRunner, RequestLimits
from gql_api.graphql.schema import build_schema
from gql_api.settings import Settings
from tests.conftest import TEST_SECRET, LiveServer, api_process, serve

LIMIT = 64 * 1024


def _aliases(count: int) -> str:
    return " ".join(f"a{n}: __typename" for n in range(count))


def _errors(response: httpx.Response) -> list[dict]:
    body = response.json()
    assert body.get("errors"), body
    return body["errors"]


@pytest.fixture(scope="module")
async def strict(server, make_settings) -> AsyncIterator[LiveServer]:
    """An app with small limits, to reach them with valid queries.

    It shares the session app's database: a second client would re-bind Beanie (which is
    global) to itself and close it on exit, under the session's app.
    """
    settings = make_settings(graphql_max_depth=3, graphql_max_body_bytes=2048, graphql_batch_max_operations=2)
    async with serve(create_app(settings, database=server.services.database)) as live:
        yield live


async def test_aliases_over_the_limit_are_refused(http):
    allowed = await http.post("/graphql", json={"query": f"{{ {_aliases(15)} }}"})
    refused = await http.post("/graphql", json={"query": f"{{ {_aliases(16)} }}"})

    assert allowed.json()["data"]["a14"] == "Query"
    assert refused.status_code == 200
    [error] = _errors(refused)
    assert error["message"] == "16 aliases found. Allowed: 15"
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}
    assert refused.json()["data"] is None


def _tokens(count: int) -> str:
    """A valid query of exactly ``count`` tokens (over 40).

    Padded with spreads of one fragment: graphql-core gives up on a document that repeats one
    field many times ("Validation aborted.", the field-merging budget), which would hide the
    token limit.
    """
    head = (
        "{ me { id username name surname availabilityStatus __typename profilePhoto"
        " { id url type createdAt updatedAt __typename variants { size url __typename } } }"
    )
    tail = " } fragment P on Query { __typename }"
    rest = count - 25 - 8  # the tokens of head and tail
    return head + " __typename" * (rest % 2) + " ...P" * (rest // 2) + tail


async def test_tokens_over_the_limit_are_refused(make_user, client_for):
    client = client_for(await make_user())
    allowed = await client.execute(_tokens(2000))
    refused = await client.execute(_tokens(2001))

    assert "errors" not in allowed, allowed["errors"]
    assert allowed["data"]["me"]["profilePhoto"]["url"].startswith("https://")
    [error] = refused["errors"]
    assert error["message"] == "Syntax Error: Document contains more than 2000 tokens. Parsing aborted."
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


async def test_depth_over_the_default_limit_is_refused(http):
    # Depth counts levels below the root field: `{ me { id } }` is 1. This schema has no
    # cycles, so no valid query is deeper than 10; the limit holds all the same.
    def nested(depth: int) -> str:
        return "{ me " + "{ a " * depth + "}" * (depth + 1)

    at_limit = _errors(await http.post("/graphql", json={"query": nested(10)}))
    over = _errors(await http.post("/graphql", json={"query": nested(11)}))

    message = "'anonymous' exceeds maximum operation depth of 10"
    assert message not in [e["message"] for e in at_limit]
    assert message in [e["message"] for e in over]
    assert {e["extensions"]["code"] for e in over} == {"BAD_USER_INPUT"}


async def test_depth_limit_is_configurable(strict):
    async with httpx.AsyncClient(base_url=strict.url) as client:
        at_limit = await client.post("/graphql", json={"query": "{ me { profilePhoto { variants { url } } } }"})
        over = await client.post(
            "/graphql", json={"query": '{ chatMessages(streamId: "x") { edges { node { sender { id } } } } }'}
        )

    # At the limit the query runs (and needs a token); one level deeper it never runs.
    assert _errors(at_limit)[0]["extensions"]["code"] == "UNAUTHENTICATED"
    [error] = _errors(over)
    assert error["message"] == "'anonymous' exceeds maximum operation depth of 3"
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


async def test_graphiql_introspection_fits_the_default_limits(http):
    query = get_introspection_query(
        descriptions=True,
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
    )
    body = (await http.post("/graphql", json={"query": query})).json()
    assert "errors" not in body, body.get("errors")
    assert body["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_a_body_over_64_kib_is_413_with_a_graphql_error(http):
    def body_of(size: int) -> bytes:
        head = json.dumps({"query": "{ __typename }", "variables": {"pad": ""}})
        return head.replace('"pad": ""', '"pad": "' + "x" * (size - len(head)) + '"').encode()

    allowed = await http.post("/graphql", content=body_of(LIMIT), headers={"Content-Type": "application/json"})
    refused = await http.post("/graphql", content=body_of(LIMIT + 1), headers={"Content-Type": "application/json"})

    assert allowed.json() == {"data": {"__typename": "Query"}}
    assert refused.status_code == 413
    assert refused.headers["content-type"] == "application/json"
    assert refused.json() == {
        "errors": [
            {
                "message": "Request body too large: at most 65536 bytes",
                "extensions": {"code": "PAYLOAD_TOO_LARGE", "statusCode": 413},
            }
        ]
    }


async def test_a_chunked_body_is_cut_off_at_the_limit(strict):
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"query": "{ __typename }", "variables": {"pad": "'
        for _ in range(3):
            yield b"x" * 1024
        yield b'"}}'

    async with httpx.AsyncClient(base_url=strict.url) as client:
        response = await client.post("/graphql", content=chunks(), headers={"Content-Type": "application/json"})

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"] == {"code": "PAYLOAD_TOO_LARGE", "statusCode": 413}


async def test_batching_is_off_by_default(http):
    response = await http.post("/graphql", json=[{"query": "{ __typename }"}, {"query": "{ __typename }"}])
    assert response.status_code == 400
    assert response.json() == {
        "errors": [{"message": "Batching is not enabled", "extensions": {"code": "BAD_USER_INPUT", "statusCode": 400}}]
    }


async def test_batching_can_be_turned_on_with_a_maximum(strict):
    async with httpx.AsyncClient(base_url=strict.url) as client:
        two = await client.post("/graphql", json=[{"query": "{ __typename }"}] * 2)
        three = await client.post("/graphql", json=[{"query": "{ __typename }"}] * 3)

    assert two.json() == [{"data": {"__typename": "Query"}}] * 2
    assert three.status_code == 400
    assert three.json()["errors"][0]["message"] == "Too many operations"


async def test_a_batch_item_that_is_not_an_operation_is_400(strict):
    async with httpx.AsyncClient(base_url=strict.url) as client:
        response = await client.post("/graphql", json=[{"query": "{ __typename }"}, 2])

    assert response.status_code == 400
    assert response.json() == {
        "errors": [
            {
                "message": "Each operation of a batch must be a JSON object",
                "extensions": {"code": "BAD_USER_INPUT", "statusCode": 400},
            }
        ]
    }


async def _subscribe(server: LiveServer, token: str, query: str) -> tuple[dict | None, int | None]:
    """Subscribe over graphql-transport-ws: the server's first answer, or how it closed."""
    async with websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        try:
            message = json.loads(await ws.recv())
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None  # noqa: PT017 - a helper saying how the server closed
            return {"reason": closed.rcvd.reason}, closed.rcvd.code
        # A refused operation leaves the connection up.
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"
        return message, None


async def test_limits_apply_to_subscriptions_over_websockets(server, make_user, make_stream):
    token = server.token(await make_user())
    stream_id = str((await make_stream()).id)
    aliases = " ".join(f"a{n}: id" for n in range(16))
    fields = " ".join(["id", "content", "kind", "cursor", "createdAt", "streamId", "__typename"] * 300)

    aliased, _ = await _subscribe(
        server, token, f'subscription {{ messageAdded(streamId: "{stream_id}") {{ {aliases} }} }}'
    )
    long, close_code = await _subscribe(
        server, token, f'subscription {{ messageAdded(streamId: "{stream_id}") {{ {fields} }} }}'
    )

    assert aliased is not None and aliased["type"] == "error" and aliased["id"] == "1"
    assert aliased["payload"] == [
        {
            "message": "16 aliases found. Allowed: 15",
            "extensions": {"code": "BAD_USER_INPUT", "statusCode": 400},
        }
    ]
    # A document that does not parse closes the connection with 4400 (graphql-transport-ws).
    assert close_code == 4400, long
    assert long == {"reason": "Syntax Error: Document contains more than 2000 tokens. Parsing aborted."}
    assert server.services.hub.subscriber_count(stream_id) == 0


# Checking a document costs time linear in its size; caches hold bounded memory; production
# suggests nothing.


def _doubling(levels: int, leaf: str = "__typename") -> str:
    """A document whose fragments each spread the next twice: 2^levels leaves once expanded."""
    fragments = " ".join(f"fragment F{n} on Query {{ ...F{n + 1} ...F{n + 1} }}" for n in range(levels))
    return f"query {{ ...F0 }} {fragments} fragment F{levels} on Query {{ {leaf} }}"


@pytest.mark.slow
async def test_fragments_spread_twice_at_each_of_30_levels_get_an_answer(tmp_path, mongo_uri):
    # A replica of its own: were checking the document to block its event loop, the test's
    # loop (which also runs the in-process servers) would not block with it.
    env = {"MONGODB_URI": mongo_uri, "MONGODB_DB": "limits_doubling", "JWT_SECRET": TEST_SECRET}
    async with api_process(tmp_path, **env) as api, httpx.AsyncClient(base_url=api.url, timeout=None) as client:
        try:
            # A guard against a hang (2^30 spreads walked one by one), not a speed threshold.
            plain, aliased = await asyncio.wait_for(
                asyncio.gather(
                    client.post("/graphql", json={"query": _doubling(30)}),
                    client.post("/graphql", json={"query": _doubling(30, leaf="a: __typename")}),
                ),
                20,
            )
        except TimeoutError:
            api.process.kill()  # still walking them: it would not stop on SIGINT either
            raise

    assert plain.json() == {"data": {"__typename": "Query"}}
    assert aliased.json() == {
        "data": None,
        "errors": [
            {
                "message": "1073741824 aliases found. Allowed: 15",
                "extensions": {"code": "BAD_USER_INPUT", "statusCode": 400},
            }
        ],
    }


async def test_aliases_count_once_per_spread_of_their_fragment(http):
    allowed = await http.post("/graphql", json={"query": _doubling(3, leaf="a: __typename")})
    refused = await http.post("/graphql", json={"query": _doubling(4, leaf="a: __typename")})

    assert allowed.json() == {"data": {"a": "Query"}}
    assert [e["message"] for e in _errors(refused)] == ["16 aliases found. Allowed: 15"]


async def test_depth_is_counted_through_fragments(strict):
    at_limit = (
        "query Deep { me { ...U } } fragment U on User { profilePhoto { ...P } }"
        " fragment P on ProfilePhoto { variants { url } }"
    )
    over = (
        'query Deep { chatMessages(streamId: "x") { ...C } }'
        " fragment C on ChatMessageConnection { edges { node { ...M } } }"
        " fragment M on ChatMessage { sender { id } }"
    )
    async with httpx.AsyncClient(base_url=strict.url) as client:
        allowed = await client.post("/graphql", json={"query": at_limit})
        refused = await client.post("/graphql", json={"query": over})

    assert _errors(allowed)[0]["extensions"]["code"] == "UNAUTHENTICATED"  # it ran
    [error] = _errors(refused)
    assert error["message"] == "'Deep' exceeds maximum operation depth of 3"
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "statusCode": 400}


async def test_fragment_cycles_are_refused(http):
    query = "{ ...A } fragment A on Query { ...B __typename } fragment B on Query { ...A }"
    body = (await http.post("/graphql", json={"query": query})).json()

    assert body["data"] is None
    assert [e["message"] for e in body["errors"]] == ["Cannot spread fragment 'A' within itself via 'B'."]
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_field_repeated_hundreds_of_times_is_refused(http):
    # graphql-core compares every pair of same-named fields; its work budget is lowered so
    # such a document is refused before it can block the event loop for long.
    allowed = await http.post("/graphql", json={"query": "{" + " __typename" * 100 + "}"})
    refused = await http.post("/graphql", json={"query": "{" + " me { id }" * 400 + "}"})

    assert allowed.json() == {"data": {"__typename": "Query"}}
    assert _errors(refused) == [
        {"message": "Validation aborted.", "extensions": {"code": "BAD_USER_INPUT", "statusCode": 400}}
    ]


def test_the_document_cache_is_bounded_by_bytes_and_keeps_no_large_entry():
    document = parse("{ __typename }")
    cache = DocumentCache(max_bytes=1000, max_entry_bytes=450)
    for key in "abc":
        assert cache.put(key, CachedDocument(document, cost=300))
    cache.get("a")  # now the most recently used
    assert cache.put("d", CachedDocument(document, cost=300))

    assert ("a" in cache, "b" in cache, "c" in cache, "d" in cache) == (True, False, True, True)
    assert cache.bytes == 900
    assert not cache.put("big", CachedDocument(document, cost=451))
    assert "big" not in cache and cache.bytes == 900

    grown = cache.get("a")
    assert grown is not None
    grown.cost = 450
    assert cache.put("a", grown)  # accounted anew, evicting the least recently used
    assert cache.bytes == 750 and len(cache) == 2 and "c" not in cache
    grown.cost = 500
    assert not cache.put("a", grown)
    assert "a" not in cache and cache.bytes == 300


async def test_one_extension_per_operation_applies_every_limit_and_caches_the_document():
    # Strawberry builds each extension, and looks up each of its hooks, for every operation:
    # the limits and caches are one extension (they were four, a tenth of a send's CPU).
    schema = build_schema()
    (extension,) = schema.get_extensions()
    assert isinstance(extension, RequestLimits)
    query = "query Q { __typename }"
    for _ in range(2):
        result = await schema.execute(query)
        assert result.errors is None and result.data == {"__typename": "Query"}
    assert len(schema.document_cache) == 1  # parsed and validated once, found the second time
    over = await schema.execute("{" + " __typename" * 2000 + " }")  # over the default token limit
    assert over.errors is not None and "token" in over.errors[0].message.lower()
    shallow = build_schema(Settings.model_construct(graphql_max_depth=2))
    deep = await shallow.execute('{ chatMessages(streamId: "x") { edges { node { id } } } }')
    assert deep.errors is not None and "depth" in deep.errors[0].message.lower()


def _execution_context(schema: strawberry.Schema) -> ExecutionContext:
    return ExecutionContext(query=None, schema=schema, allowed_operations=())


async def test_the_limits_run_without_strawberrys_per_hook_wrappers_unless_another_extension_is_there(make_settings):
    # Strawberry's runner wraps each hook in a context manager for every operation (a tenth of
    # a cached query's CPU); the one extension's steps are called directly instead.
    for settings in (make_settings(), make_settings(app_env="production")):
        schema = build_schema(settings)
        extensions = schema.get_extensions()
        assert [type(extension) for extension in extensions] == [RequestLimits]  # production too
        runner = schema.create_extensions_runner(_execution_context(schema), extensions)
        assert isinstance(runner, LimitsRunner)
    seen: list[str] = []

    class Witness(SchemaExtension):
        def on_parse(self) -> Iterator[None]:
            seen.append("parse")
            yield

    schema = build_schema(Settings.model_construct(graphql_max_depth=2))
    schema.extensions = (*schema.extensions, Witness)
    extensions = schema.get_extensions()
    runner = schema.create_extensions_runner(_execution_context(schema), extensions)
    assert type(runner) is SchemaExtensionsRunner  # Strawberry's own, for both
    deep = await schema.execute('{ chatMessages(streamId: "x") { edges { node { id } } } }')
    assert deep.errors is not None and "depth" in deep.errors[0].message.lower()
    assert seen == ["parse"]


def test_strawberrys_runner_is_what_limits_runner_replaces():
    # LimitsRunner stands in for Strawberry's SchemaExtensionsRunner (an internal): a lifecycle
    # step added by an upgrade, or a schema that no longer asks for its runner, fails here.
    public = {name for name, _ in inspect.getmembers(SchemaExtensionsRunner, inspect.isfunction) if name[0] != "_"}
    assert public == {
        "operation",
        "parsing",
        "validation",
        "executing",
        "on_stream_result",
        "get_extensions_results",
        "get_extensions_results_sync",
    }, "re-verify gql_api/graphql/limits.py LimitsRunner against this Strawberry"
    assert all(name in vars(LimitsRunner) for name in public)
    for method in (strawberry.Schema.execute, strawberry.Schema.execute_sync, strawberry.Schema.stream):
        assert "self.create_extensions_runner(" in inspect.getsource(method), method
    # Strawberry's own steps leave a document the limits parsed, and errors they found, alone.
    parse_step = inspect.getsource(strawberry_schema._parse_operation_document)
    assert "if execution_context.graphql_document is not None:" in parse_step
    assert "execution_context.pre_execution_errors is None" in inspect.getsource(strawberry_schema._run_validation)


async def test_a_large_document_is_not_kept_after_its_request():
    schema = build_schema()
    documents: list[weakref.ref[DocumentNode]] = []

    class Witness(SchemaExtension):
        def on_validate(self) -> Iterator[None]:
            assert self.execution_context.graphql_document is not None
            documents.append(weakref.ref(self.execution_context.graphql_document))
            yield

    schema.extensions = (*schema.extensions, Witness)  # sees the document each request uses
    small = "query Small { __typename }"

    def large(n: int) -> str:  # few tokens, a 1 MiB string literal
        return f'query Large($pad: String = "{n}{"x" * 1024 * 1024}") {{ __typename }}'

    for query in (small, large(0), large(1), small):
        result = await schema.execute(query)
        assert result.data == {"__typename": "Query"} or [e.message for e in result.errors or []] == [
            "Variable '$pad' is never used in operation 'Large'."
        ]
    del result
    gc.collect()

    small_first, large_first, large_second, small_again = (document() for document in documents)
    assert large_first is None and large_second is None
    assert small_first is not None and small_again is small_first  # small ones are still cached
    assert len(schema.document_cache) == 1


SUGGESTING = [
    '{ liveStream(idd: "1") { id } }',  # Did you mean 'id'?
    "query($x: Idd) { __typename }",  # Did you mean 'ID' or 'Int'?
    "{ mee { id } }",  # Did you mean 'me'?
    "{ __typename @include(iff: true) }",  # Did you mean 'if'?
    "{ ...F } fragment F on Usr { id }",  # Did you mean 'User'?
]


@pytest.fixture(scope="module")
async def production(server, make_settings) -> AsyncIterator[LiveServer]:
    """A production app, on the session app's database (see ``strict``)."""
    app = create_app(make_settings(app_env="production"), database=server.services.database)
    async with serve(app) as live:
        yield live


async def test_production_suggests_nothing(http, production):
    async with httpx.AsyncClient(base_url=production.url) as client:
        for query in SUGGESTING:
            development = _errors(await http.post("/graphql", json={"query": query}))
            quiet = _errors(await client.post("/graphql", json={"query": query}))

            assert any("Did you mean" in e["message"] for e in development), development
            assert not any("Did you mean" in e["message"] for e in quiet), quiet
            assert {e["extensions"]["code"] for e in quiet} == {"BAD_USER_INPUT"}
            assert len(quiet) == len(development)


def test_production_coerces_variables_without_suggestions(make_settings):
    # No argument of this schema takes an enum yet; a variable of one would suggest values.
    document = parse("query($kind: MessageKind) { __typename }")
    messages = {}
    for env in ("development", "production"):
        schema = build_schema(make_settings(app_env=env))
        errors = schema.execution_context_class.build(schema._schema, document, raw_variable_values={"kind": "TEXX"})
        assert isinstance(errors, list)
        messages[env] = [error.message for error in errors]

    assert "Did you mean the enum value 'TEXT'?" in messages["development"][0]
    assert messages["production"] == [messages["development"][0].split(" Did you mean")[0]]
