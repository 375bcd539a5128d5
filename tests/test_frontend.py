"""The JS tests in tests/js, run by Node's test runner against the real app served here.

``browser.test.mjs`` drives Debian's Chromium (GraphiQL, the demo page, a dropped connection),
``resume.test.mjs`` runs resume.js with the graphql-ws npm client, ``apollo.test.mjs`` runs
Apollo Client (pagination, GraphQLWsLink, a renamed sender), ``urql.test.mjs`` runs urql's
default GET queries into the CSRF rule and out of it, ``assets.test.mjs`` rebuilds
the committed static files. Each skips when Node, Chromium or ``frontend/node_modules`` is
missing, saying what is missing and that ``.ci/install-js`` installs it (before any fixture
starts, so that a machine without them runs the rest of the suite as fast as ever). Screenshots
go to ``GQL_API_SCREENSHOTS`` when set (``GQL_API_SCREENSHOTS=docs`` refreshes the README's), else
to a temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
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


INSTALL = ".ci/install-js"


def missing(needs_browser: bool) -> str | None:
    """What the JS tests lack here (None when they can run)."""
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if not all((NODE_MODULES / package).is_dir() for package in ("playwright-core", "@apollo/client", "@urql/core")):
        return "frontend/node_modules is missing or out of date"
    if needs_browser and chromium() is None:
        return "Chromium is not installed"
    return None


def needs(name: str, needs_browser: bool = False) -> pytest.MarkDecorator:
    """Skip ``name``'s test, saying why and the one command that enables it, when it cannot run."""
    reason = missing(needs_browser)
    return pytest.mark.skipif(
        reason is not None, reason=f"JS tests ({name}): {reason}; `{INSTALL}` installs what they need"
    )


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
    [
        pytest.param(name, needs_browser, marks=needs(name, needs_browser), id=name)
        for name, needs_browser in [
            ("assets.test.mjs", False),
            ("resume.test.mjs", False),
            ("urql.test.mjs", False),
            ("browser.test.mjs", True),
        ]
    ],
)
async def test_js(name: str, needs_browser: bool, server: LiveServer, tmp_path: Path) -> None:
    screenshots = Path(os.environ.get("GQL_API_SCREENSHOTS") or tmp_path).resolve()  # noqa: ASYNC240 - once, at setup
    await run_node_tests(
        JS_TESTS / name,
        {"GQL_API_URL": server.url, "CHROMIUM": chromium() or "", "GQL_API_SCREENSHOTS": str(screenshots)},
    )
    if needs_browser:
        assert {"graphiql.png", "demo.png"} <= {p.name for p in screenshots.iterdir()}


@needs("apollo.test.mjs")
async def test_apollo_client(
    server: LiveServer,
    make_user: Callable[..., Awaitable[User]],
    make_stream: Callable[..., Awaitable[LiveStream]],
) -> None:
    # A user who created a stream and sent a message in it, then was renamed by the platform's
    # user service (here: in the database directly; the API cannot rename). The JS test sends
    # another message as them.
    user = await make_user(name="Ada", surname="Lovelace")
    stream = await make_stream(user)
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


@pytest.mark.slow
def test_without_node_the_suite_passes_and_says_what_it_skipped_and_how_to_enable_it(tmp_path: Path) -> None:
    # The README's test command on a machine with neither Node nor Chromium: an empty PATH.
    env = {key: value for key, value in os.environ.items() if key not in {"CHROMIUM", "GQL_API_SCREENSHOTS"}}
    env["PATH"] = str(tmp_path)
    js_tests = ["tests/test_frontend.py", "tests/test_graphql_http_audit.py"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "not slow", *js_tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TEST_TIMEOUT_SECONDS,
        check=False,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    skipped = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
    # -rs (pyproject's addopts) lists each skip with its reason: what is missing, and the command.
    assert len(skipped) == 7, run.stdout  # 5 here (4 of them test_js's), 2 audits
    assert all("Node.js" in line and "`.ci/install-js`" in line for line in skipped), skipped
    assert "7 skipped" in run.stdout.splitlines()[-1], run.stdout
