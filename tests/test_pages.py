"""The development pages: GraphiQL and the demo served from the package, under a CSP, and
nothing of them in production."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from gql_api.app import create_app
from tests.conftest import LiveServer, serve

ASSET = re.compile(r'(?:src|href)="([^"]+)"')


@pytest.fixture(scope="module")
async def production(server, make_settings) -> AsyncIterator[LiveServer]:
    app = create_app(make_settings(app_env="production"), database=server.services.database)
    async with serve(app) as live:
        yield live


def directives(response: httpx.Response) -> dict[str, str]:
    policy = response.headers["content-security-policy"]
    return {name: value for name, _, value in (d.strip().partition(" ") for d in policy.split(";"))}


async def assert_assets_are_local(http: httpx.AsyncClient, page: httpx.Response) -> list[str]:
    """Every script and stylesheet of the page comes from this app, with the right type."""
    assets = [url for url in ASSET.findall(page.text) if not url.startswith("data:")]
    assert assets and all(url.startswith("static/") for url in assets), assets
    for url in assets:
        response = await http.get(f"/{url}")
        assert response.status_code == 200, url
        expected = "javascript" if url.endswith(".js") else "text/css"
        assert expected in response.headers["content-type"], (url, response.headers["content-type"])
    return assets


async def test_graphiql_is_the_apps_own_build_under_a_csp(http, server):
    page = await http.get("/graphql", headers={"Accept": "text/html"})

    assert page.status_code == 200
    assert "GraphiQL" in page.text and "<script>" not in page.text
    assert "//" not in "".join(ASSET.findall(page.text))  # no CDN, no other host
    policy = directives(page)
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    host = server.url.removeprefix("http://")
    assert policy["connect-src"] == f"'self' ws://{host} wss://{host}"
    assert await assert_assets_are_local(http, page) == ["static/graphiql.css", "static/graphiql.js"]


async def test_demo_page_and_its_modules_are_served(http):
    page = await http.get("/demo")

    assert page.status_code == 200
    assert directives(page)["script-src"] == "'self'"
    assert await assert_assets_are_local(http, page) == ["static/demo.css", "static/demo.js"]
    # demo.js imports these two as ES modules, which browsers load only with a JavaScript type.
    for module in ("graphql-ws.js", "resume.js"):
        response = await http.get(f"/static/{module}")
        assert response.status_code == 200 and "javascript" in response.headers["content-type"]


async def test_demo_data_gives_the_demo_stream_and_tokens_that_work(http):
    response = await http.get("/demo/data")

    assert response.status_code == 200
    data = response.json()
    assert set(data["users"]) == {"alice", "bob", "carol"}
    query = "query ($id: ID!) { me { username } liveStream(id: $id) { status } }"
    answer = await http.post(
        "/graphql",
        json={"query": query, "variables": {"id": data["streamId"]}},
        headers={"Authorization": data["users"]["bob"]["token"]},
    )
    assert answer.json() == {"data": {"me": {"username": "bob"}, "liveStream": {"status": "LIVE"}}}
    # Asking again creates nothing new.
    assert (await http.get("/demo/data")).json()["streamId"] == data["streamId"]


async def test_a_host_header_that_is_not_a_host_stays_out_of_the_policy(http):
    page = await http.get("/demo", headers={"Host": "evil; script-src *"})

    assert directives(page)["connect-src"] == "'self'"
    assert directives(page)["script-src"] == "'self'"


@pytest.mark.parametrize("path", ["/demo", "/demo/data", "/static/graphiql.js", "/static/resume.js"])
async def test_production_serves_none_of_it(production, path):
    async with httpx.AsyncClient(base_url=production.url) as client:
        assert (await client.get(path)).status_code == 404
