"""The JS tests in tests/js, run by Node's test runner against the real app served here.

``browser.test.mjs`` drives Debian's Chromium (GraphiQL, the demo page, a dropped connection),
``resume.test.mjs`` runs resume.js with the graphql-ws npm client, ``apollo.test.mjs`` runs
Apollo Client (pagination, GraphQLWsLink, a renamed sender), ``assets.test.mjs`` rebuilds
the committed static files. Each skips, naming the command that enables it, when Node, Chromium
or ``frontend/node_modules`` is missing. Screenshots go to ``GQL_API_SCREENSHOTS`` when set
(``GQL_API_SCREENSHOTS=docs`` refreshes the README's), else to a temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gql_api.documents import LiveStream, User
from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parent.parent
JS_TESTS = Path(__file__).resolve().parent / "js"
NODE_MODULES = ROOT / "frontend" / "node_modules"
# Generous: the browser tests take about 30 s on a loaded 2-core machine.
NODE_TEST_TIMEOUT_SECONDS = 600


def chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium")


def missing(needs_browser: bool) -> str | None:
    """Why the JS tests cannot run here, and the command that fixes it; None when they can."""
    if shutil.which("node") is None:
        return "Node.js is not installed: apt-get install -y nodejs npm"
    if not all((NODE_MODULES / package).is_dir() for package in ("playwright-core", "@apollo/client")):
        return "frontend/node_modules is missing or out of date: npm --prefix frontend ci --ignore-scripts"
    if needs_browser and chromium() is None:
        return "Chromium is not installed: apt-get install -y chromium"
    return None


async def run_node_tests(path: Path, env: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        "node",
        "--test",
        "--test-reporter=spec",
        str(path),
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), NODE_TEST_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, output.decode(errors="replace")


@pytest.mark.parametrize(
    ("name", "needs_browser"),
    [("assets.test.mjs", False), ("resume.test.mjs", False), ("browser.test.mjs", True)],
)
async def test_js(name: str, needs_browser: bool, server: LiveServer, tmp_path: Path) -> None:
    if reason := missing(needs_browser):
        pytest.skip(f"JS tests ({name}): {reason}")
    screenshots = Path(os.environ.get("GQL_API_SCREENSHOTS") or tmp_path).resolve()  # noqa: ASYNC240 - once, at setup
    await run_node_tests(
        JS_TESTS / name,
        {"GQL_API_URL": server.url, "CHROMIUM": chromium() or "", "GQL_API_SCREENSHOTS": str(screenshots)},
    )
    if needs_browser:
        assert {"graphiql.png", "demo.png"} <= {p.name for p in screenshots.iterdir()}


async def test_apollo_client(
    server: LiveServer,
    make_user: Callable[..., Awaitable[User]],
    make_stream: Callable[..., Awaitable[LiveStream]],
) -> None:
    if reason := missing(needs_browser=False):
        pytest.skip(f"JS tests (apollo.test.mjs): {reason}")
    # A user who sent a message, then was renamed by the platform's user service (here: in the
    # database directly; the API cannot rename). The JS test sends another message as them.
    user = await make_user(name="Ada", surname="Lovelace")
    stream = await make_stream()
    await server.chat.send_message(user, str(stream.id), "before the rename")
    await user.set({User.name: "Augusta", User.username: f"{user.username}_a"})
    renamed = {
        "token": server.token(user),
        "streamId": str(stream.id),
        "userId": str(user.id),
        "oldName": "Ada",
        "newName": "Augusta",
    }
    await run_node_tests(
        JS_TESTS / "apollo.test.mjs", {"GQL_API_URL": server.url, "GQL_API_RENAMED": json.dumps(renamed)}
    )
