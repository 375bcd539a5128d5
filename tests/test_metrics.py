"""/metrics: the numbers an operator scrapes move with what the service does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from gql_api.app import create_app
from gql_api.errors import ConfigurationError, SubscriberTooSlow
from gql_api.hub import MessageHub
from gql_api.metrics import Metrics
from gql_api.settings import load_settings
from tests.conftest import GraphQLClient, LiveServer, serve

SEND = "mutation($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id } }"
SUBSCRIBE = "subscription($s: ID!) { messageAdded(streamId: $s) { content } }"
METRIC_NAMES = {
    "gql_api_websocket_connections",
    "gql_api_subscriptions",
    "gql_api_deliveries",
    "gql_api_slow_subscribers_dropped",
    "gql_api_message_send_seconds",
    "gql_api_change_stream_lag_seconds",
    "gql_api_rate_limit_refusals",
    "gql_api_errors",
    "gql_api_websocket_closes",
}


class Scrape:
    """One scrape of /metrics, parsed."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 for a labelled series not counted yet."""
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0


@pytest.fixture
async def observed(server: LiveServer, make_settings: Callable[..., Any]) -> AsyncIterator[LiveServer]:
    """An app of its own (its own registry, so counts start at zero), limited to 2 messages a window."""
    settings = make_settings(rate_limit_messages=2, ws_ping_interval_seconds=600)
    app = create_app(settings, database=server.services.database)
    async with serve(app) as live:
        yield live


@pytest.fixture
async def observed_http(observed: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=observed.url, timeout=10) as client:
        yield client


async def _scrape(http: httpx.AsyncClient) -> Scrape:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    return Scrape(response.text)


async def _recv(ws: Any) -> dict[str, Any]:
    return json.loads(await ws.recv())


async def test_metrics_are_served_in_the_prometheus_text_format_or_openmetrics(observed_http):
    response = await observed_http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert Scrape(response.text).families.keys() >= METRIC_NAMES
    assert "process_resident_memory_bytes" in response.text
    openmetrics = await observed_http.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


async def test_connections_subscriptions_deliveries_and_latencies_move(observed, observed_http, make_user, make_stream):
    viewer, sender = await make_user(), await make_user()
    stream = await make_stream()
    assert (await _scrape(observed_http)).value("gql_api_websocket_connections") == 0

    async with websockets.connect(observed.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": observed.token(viewer)}}))
        assert (await _recv(ws))["type"] == "connection_ack"
        opened = await _scrape(observed_http)
        assert opened.value("gql_api_websocket_connections") == 1
        assert opened.value("gql_api_subscriptions") == 0

        payload = {"query": SUBSCRIBE, "variables": {"s": str(stream.id)}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        await observed.services.hub.wait_for_subscribers(str(stream.id), 1)
        assert (await _scrape(observed_http)).value("gql_api_subscriptions") == 1

        await GraphQLClient(observed_http, observed.token(sender)).data(SEND, {"s": str(stream.id), "c": "hi"})
        assert (await _recv(ws))["payload"]["data"]["messageAdded"]["content"] == "hi"
        delivered = await _scrape(observed_http)

    await observed.app.graphql.connections.drained()
    await observed.services.hub.wait_for_subscribers(str(stream.id), 0)
    closed = await _scrape(observed_http)

    assert delivered.value("gql_api_deliveries_total") == 1
    assert delivered.value("gql_api_message_send_seconds_count", kind="text", outcome="ok") == 1
    assert delivered.value("gql_api_message_send_seconds_sum", kind="text", outcome="ok") > 0
    # Its change event reached this replica (others' messages may have too: the database is shared).
    assert delivered.value("gql_api_change_stream_lag_seconds_count") >= 1
    assert closed.value("gql_api_websocket_connections") == 0
    assert closed.value("gql_api_subscriptions") == 0


async def test_rate_limit_refusals_and_errors_are_counted_by_code(observed, observed_http, make_user, make_stream):
    stream = await make_stream()
    client = GraphQLClient(observed_http, observed.token(await make_user()))
    for n in range(2):
        await client.data(SEND, {"s": str(stream.id), "c": f"m{n}"})

    refused = await client.error(SEND, {"s": str(stream.id), "c": "one too many"})
    not_json = await observed_http.post("/graphql", content=b"{", headers={"Content-Type": "application/json"})
    rest = await observed_http.post(f"/api/v1/live-stream/{stream.id}/chat/messages", json={"content": ""})
    unknown = await observed_http.get("/api/v1/nowhere")
    scrape = await _scrape(observed_http)

    assert refused["extensions"]["code"] == "RATE_LIMITED"
    assert (not_json.status_code, rest.status_code, unknown.status_code) == (400, 401, 404)
    assert scrape.value("gql_api_rate_limit_refusals_total") == 1
    assert scrape.value("gql_api_message_send_seconds_count", kind="text", outcome="error") == 1
    assert scrape.value("gql_api_message_send_seconds_count", kind="text", outcome="ok") == 2
    assert scrape.value("gql_api_errors_total", code="RATE_LIMITED", api="graphql") == 1
    assert scrape.value("gql_api_errors_total", code="BAD_USER_INPUT", api="graphql") == 1
    assert scrape.value("gql_api_errors_total", code="UNAUTHENTICATED", api="rest") == 1
    assert scrape.value("gql_api_errors_total", code="NOT_FOUND", api="rest") == 1


async def test_websocket_close_codes_are_counted(observed, observed_http):
    async with websockets.connect(observed.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": "not a token"}}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()

    assert closed.value.rcvd.code == 4403
    assert (await _scrape(observed_http)).value("gql_api_websocket_closes_total", code="4403") == 1


async def test_a_slow_subscriber_dropped_by_the_hub_is_counted(server, make_user, make_stream):
    stream = await make_stream()
    metrics = Metrics()
    hub = MessageHub(server.chat.store, queue_size=2, metrics=metrics)
    sender = await make_user()
    async with hub.subscribe(str(stream.id)) as slow, hub.subscribe(str(stream.id)) as fast:
        messages = [await server.chat.send_message(sender, str(stream.id), f"m{n}") for n in range(3)]
        await hub.deliver(messages[0])
        assert (await anext(fast)).seq == messages[0].seq
        await hub.deliver(messages[1])
        await hub.deliver(messages[2])  # slow never reads: it holds 3 > 2
        assert [(await anext(fast)).seq, (await anext(fast)).seq] == [messages[1].seq, messages[2].seq]
        with pytest.raises(SubscriberTooSlow):
            await anext(slow)

    assert metrics.registry.get_sample_value("gql_api_slow_subscribers_dropped_total") == 1
    assert metrics.registry.get_sample_value("gql_api_deliveries_total") == 3 + 2


async def test_apps_in_one_process_count_separately(observed, observed_http, server, http):
    before = (await _scrape(http)).value("gql_api_errors_total", code="NOT_FOUND", api="rest")
    await observed_http.get("/api/v1/nowhere")

    assert (await _scrape(observed_http)).value("gql_api_errors_total", code="NOT_FOUND", api="rest") == 1
    assert (await _scrape(http)).value("gql_api_errors_total", code="NOT_FOUND", api="rest") == before


@pytest.mark.parametrize("overrides", [{"metrics_enabled": False}, {"metrics_token": SecretStr("t" * 32)}])
async def test_metrics_can_be_turned_off_or_kept_behind_a_token(server, make_settings, overrides):
    app = create_app(make_settings(**overrides), database=server.services.database)
    async with serve(app) as live, httpx.AsyncClient(base_url=live.url) as http:
        anonymous = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer " + "u" * 32})
        right = await http.get("/metrics", headers={"Authorization": "Bearer " + "t" * 32})

    if "metrics_enabled" in overrides:
        assert (anonymous.status_code, right.status_code) == (404, 404)
        return
    assert (anonymous.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert anonymous.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "gql_api_deliveries_total" in right.text


def test_a_short_metrics_token_is_refused():
    with pytest.raises(ConfigurationError, match="metrics_token"):
        load_settings(metrics_token="short", jwt_secret="x" * 40)
