"""The costliest documents we could build within the token and body limits, timed one at a time.

    python -m bench.documents

Starts ``gql-api serve`` on a fresh temporary data dir (the embedded database) and posts each
document five times, one request at a time, with a different amount of trailing whitespace each
time so that no answer comes from the document cache. Alone on the server, a request's latency is
how long it kept the event loop busy. Prints a Markdown table: bytes, tokens, best and median
milliseconds, and what came back.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time

import httpx
from graphql import get_introspection_query
from graphql.language import Lexer, Source, TokenKind


def _tokens(query: str) -> int | None:
    lexer = Lexer(Source(query))
    count = 0
    try:
        while lexer.advance().kind != TokenKind.EOF:
            count += 1
    except Exception:  # noqa: BLE001 - not lexable: no count
        return None
    return count


def _chain(name: str, on: str, levels: int, leaf: str, spreads: int = 2) -> str:
    spread = " ".join([f"...{name}{{n1}}"] * spreads)
    return (
        " ".join(f"fragment {name}{n} on {on} {{ {spread.format(n1=n + 1)} }}" for n in range(levels))
        + f" fragment {name}{levels} on {on} {{ {leaf} }}"
    )


def documents() -> dict[str, tuple[str, str | None]]:
    """Name -> (query, operation name)."""
    return {
        "fragments spread twice, 30 levels": ("query { ...F0 } " + _chain("F", "Query", 30, "__typename"), None),
        "fragments spread twice, 198 levels": ("query { ...F0 } " + _chain("F", "Query", 198, "__typename"), None),
        "fragments spread twice under me, 185 levels": (
            "{ me { ...U0 } } " + _chain("U", "User", 185, "id profilePhoto { variants { url } }"),
            None,
        ),
        "985 spreads of one fragment": ("{" + " ...P" * 985 + " } fragment P on Query { me { id } }", None),
        "`me { id }` 400 times": ("{" + " me { id }" * 400 + " }", None),
        "`__typename` 1,990 times": ("{" + " __typename" * 1990 + " }", None),
        "150 operations over a 135-fragment chain": (
            " ".join(f"query Q{n} {{ ...C0 }}" for n in range(150))
            + " "
            + _chain("C", "Query", 135, "__typename", spreads=1),
            "Q0",
        ),
        "280 unused fragments": (
            "{ __typename } " + " ".join(f"fragment C{n} on Query {{ __typename }}" for n in range(280)),
            None,
        ),
        "a list of 1,980 ints as an argument": ("{ liveStream(id: [" + "1 " * 1980 + "]) { id } }", None),
        "nested 990 levels": ("{" + "a{" * 990 + "b" + "}" * 991, None),
        "a 60 KB string literal": ('{ liveStream(id: "' + "x" * 60_000 + '") { id } }', None),
        "GraphiQL's introspection query": (
            get_introspection_query(
                descriptions=True,
                specified_by_url=True,
                directive_is_repeatable=True,
                schema_description=True,
                input_value_deprecation=True,
            ),
            None,
        ),
    }


async def _serve(data_dir: str) -> tuple[asyncio.subprocess.Process, str, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in {"MONGODB_URI", "JWT_SECRET", "APP_ENV"}}
    env["GQL_API_DATA_DIR"] = data_dir
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gql_api",
        "serve",
        "--port",
        str(port),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    token = ""
    assert process.stdout is not None
    async for raw in process.stdout:
        line = raw.decode(errors="replace").strip()
        if line.startswith("Token (alice):"):
            token = line.split(":", 1)[1].strip()
        if "Uvicorn running" in line:
            break
    else:
        raise RuntimeError("gql-api serve did not start")
    # Keep reading, or a full pipe would block the server's logging.
    asyncio.get_running_loop().create_task(process.stdout.read())
    return process, f"http://127.0.0.1:{port}", token


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-documents-") as data_dir:
        process, url, token = await _serve(data_dir)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=300, headers={"Authorization": token}) as client:
                await client.post("/graphql", json={"query": "{ __typename }"})
                print(f"load average before: {os.getloadavg()[0]:.1f}")
                print("| document | bytes | tokens | best ms | median ms | answer |")
                print("|---|---|---|---|---|---|")
                for name, (query, operation) in documents().items():
                    times = []
                    for pad in range(1, 6):
                        body = {"query": query + " " * pad, "operationName": operation}
                        started = time.perf_counter()
                        response = await client.post("/graphql", json=body)
                        times.append((time.perf_counter() - started) * 1000)
                    answer = response.json()
                    outcome = answer["errors"][0]["message"][:50] if answer.get("errors") else "data"
                    tokens = _tokens(query)
                    print(
                        f"| {name} | {len(query.encode()):,} | {tokens if tokens is not None else '-'} "
                        f"| {min(times):.0f} | {statistics.median(times):.0f} | {outcome} |"
                    )
                print(f"load average after: {os.getloadavg()[0]:.1f}")
        finally:
            process.terminate()
            await process.wait()


if __name__ == "__main__":
    asyncio.run(main())
