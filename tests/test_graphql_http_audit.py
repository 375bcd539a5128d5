"""The GraphQL-over-HTTP spec audit (graphql-http's ``auditServer``) against the live /graphql.

The audit is the Node.js package the spec's working group keeps (graphql/graphql-http), run by
``tests/http_audit/audit.mjs`` at the version pinned in that folder's package-lock.json. Each
audit is ``ok``, or failed as ``error`` (a MUST), ``warn`` (a SHOULD) or ``notice`` (a MAY).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

AUDIT_DIR = Path(__file__).parent / "http_audit"
INSTALL = ".ci/install-js"  # Node, npm and this folder's packages (npm --prefix tests/http_audit ci)
# The audits that send a GET without a preflight header, which the CSRF prevention refuses
# (README, "Browsers: CSRF and CORS"); all three are MAYs.
CSRF_REFUSED_GETS = {"5A70", "D6D5", "6A70"}


def _skip_reason() -> str | None:
    if shutil.which("node") is None:
        return f"the GraphQL-over-HTTP audit needs Node.js >= 20: `{INSTALL}` installs what it needs"
    if not (AUDIT_DIR / "node_modules" / "graphql-http").is_dir():
        return f"the GraphQL-over-HTTP audit's packages are not installed: `{INSTALL}` installs them"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


async def run_audit(url: str, token: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every audit's result. The server runs in this event loop, so the process is awaited."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(AUDIT_DIR / "audit.mjs"),
        env={**os.environ, "GRAPHQL_URL": url, "GRAPHQL_TOKEN": token, "GRAPHQL_HEADERS": json.dumps(headers or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode(errors="replace")
    results: list[dict[str, Any]] = json.loads(stdout)
    assert len(results) > 50  # the whole audit ran
    return results


async def test_every_audit_passes_for_a_client_that_sends_the_preflight_header(server, make_user):
    token = server.token(await make_user())
    results = await run_audit(f"{server.url}/graphql", token, {"GraphQL-Require-Preflight": "1"})

    failed = [r for r in results if r["status"] != "ok"]
    assert failed == [], json.dumps(failed, indent=2)


async def test_without_the_preflight_header_only_the_csrf_refused_gets_fail(server, make_user):
    results = await run_audit(f"{server.url}/graphql", server.token(await make_user()))

    failed = {r["id"]: r for r in results if r["status"] != "ok"}
    assert set(failed) == CSRF_REFUSED_GETS, json.dumps(list(failed.values()), indent=2)
    for result in failed.values():
        assert result["status"] == "notice"  # MAYs: every MUST and SHOULD passes
        assert result["responseStatus"] == 400
        assert "Cross-Site Request Forgery" in result["responseBody"]
