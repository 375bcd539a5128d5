"""Memory per idle subscription of ``gql-api serve``, and where it goes (issue 10).

    python bench/idle_memory.py                         # RSS per subscription, compression off
    python bench/idle_memory.py --compression both      # ... with and without permessage-deflate
    python bench/idle_memory.py --tracemalloc --top 20  # the allocation sites instead

Each run starts a fresh ``python -m gql_api serve`` on one embedded database (started and seeded
once), opens ``--low`` and then ``--high`` idle graphql-transport-ws subscriptions to one stream
(one per connection, each proven live by a marker message, as the benchmark's memory phase does)
and reports the server's RSS growth between the two counts divided by the difference, so fixed
costs cancel. ``--repeat`` runs it again on a fresh server; the report gives the spread.
``--compression on`` has the server accept permessage-deflate (``WS_COMPRESSION``) and the
subscribers offer it, as browsers do.

With ``--tracemalloc`` the server starts Python's tracemalloc once the ``--low`` subscriptions are
open (tracing slows everything, and what grows is what is allocated after that), takes a snapshot
there and another at ``--high``, and the report lists the allocation sites that grew, per
subscription, each with ``--depth`` callers (``--keep DIR`` keeps both snapshots, for
``tracemalloc.Snapshot.load``). Its RSS figure is inflated by the tracing. RSS minus what
tracemalloc sees is memory outside Python's allocator (zlib's state with compression on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/idle_memory.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.clients import Load
from bench.config import QUICK, Config
from bench.processes import ROOT, ServerProcess, base_env, free_port, log, raise_nofile, rss_kib
from bench.scenarios import wait_idle
from bench.targets import Target, make_tokens, seed

SNAPSHOT_ENV = "BENCH_TRACEMALLOC_SNAPSHOT"
FRAMES = 30


# -- the server side of --tracemalloc --------------------------------------------------------


def serve_traced(argv: list[str]) -> None:
    """``gql-api serve`` that starts tracemalloc on SIGUSR2 (tracing slows everything down: only
    what is allocated after it starts is traced, which is what grows between two counts) and on
    SIGUSR1 writes a snapshot to $BENCH_TRACEMALLOC_SNAPSHOT."""
    import tracemalloc

    path = Path(os.environ[SNAPSHOT_ENV])

    def start(signum: int, frame: Any) -> None:
        tracemalloc.start(FRAMES)

    def dump(signum: int, frame: Any) -> None:
        snapshot = tracemalloc.take_snapshot()
        tmp = path.with_suffix(".tmp")
        snapshot.dump(str(tmp))
        tmp.rename(path)

    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGUSR2, start)
    from gql_api.cli import main

    raise SystemExit(main(["serve", *argv]))


async def take_snapshot(server: ServerProcess, path: Path) -> Any:
    import tracemalloc

    path.unlink(missing_ok=True)
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the server wrote no tracemalloc snapshot")
        await asyncio.sleep(0.2)
    return tracemalloc.Snapshot.load(str(path))


# -- grouping allocation sites ---------------------------------------------------------------

_PACKAGES = ("gql_api", "strawberry", "graphql", "uvicorn", "websockets", "starlette", "asyncio", "json")


def _where(frame: Any) -> str:
    for package in _PACKAGES:
        marker = f"/{package}/"
        if marker in frame.filename:
            return f"{package}/{frame.filename.split(marker, 1)[1]}:{frame.lineno}"
    return f"{Path(frame.filename).name}:{frame.lineno}"


def _site(traceback: Any, depth: int) -> str:
    """The allocating line, then up to ``depth`` callers (tracemalloc lists the oldest first)."""
    frames = list(traceback)[::-1]
    return " <- ".join(_where(frame) for frame in frames[: depth + 1])


def top_sites(low: Any, high: Any, count: int, top: int, depth: int) -> tuple[float, list[tuple[float, float, str]]]:
    """Bytes per subscription in total, and the ``top`` sites: (bytes, blocks, site) per subscription."""
    grouped: dict[str, list[float]] = {}
    total = 0.0
    for diff in high.compare_to(low, "traceback"):
        total += diff.size_diff
        entry = grouped.setdefault(_site(diff.traceback, depth), [0.0, 0.0])
        entry[0] += diff.size_diff
        entry[1] += diff.count_diff
    rows = sorted(((size / count, blocks / count, site) for site, (size, blocks) in grouped.items()), reverse=True)
    return total / count, rows[:top]


# -- the driver ------------------------------------------------------------------------------


class Project:
    """One embedded database, seeded once; a fresh ``serve`` per run."""

    def __init__(self, workdir: Path, users: int) -> None:
        self.workdir, self.users = workdir, users
        self.embedded: Any = None
        self.env: dict[str, str] = {}
        self.tokens: list[str] = []
        self.stream_id = ""

    async def start(self) -> None:
        import secrets

        from gql_api.embedded import EmbeddedMongo

        data_dir = self.workdir / "project"
        data_dir.mkdir()
        self.embedded = EmbeddedMongo(data_dir)
        uri = await asyncio.to_thread(self.embedded.start)
        _, user_ids = await seed(uri, "gql_api", [], self.users)
        secret = secrets.token_urlsafe(48)
        self.env = {**base_env(), "GQL_API_DATA_DIR": str(data_dir), "MONGODB_DB": "gql_api", "JWT_SECRET": secret}
        demo = subprocess.run(
            [sys.executable, "-m", "gql_api", "demo", "--json"],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        self.stream_id = json.loads(demo.stdout)["streamId"]
        self.tokens = make_tokens(secret, user_ids)

    async def serve(self, run: int, compression: bool, traced: Path | None) -> Target:
        port = free_port()
        env = {**self.env, "WS_COMPRESSION": "true" if compression else "false"}
        if traced is None:
            argv = [sys.executable, "-m", "gql_api", "serve", "--port", str(port)]
        else:
            argv = [sys.executable, str(Path(__file__).resolve()), "--serve-traced", "--port", str(port)]
            env[SNAPSHOT_ENV] = str(traced)
        server = ServerProcess("project", argv, env, self.workdir / f"serve-{run}.log")
        await server.start()
        return Target("project", server, "127.0.0.1", port, self.tokens, self.stream_id)

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


async def settled_rss(target: Target, settle: float) -> int:
    await wait_idle(target)
    await asyncio.sleep(settle)
    samples = []
    for _ in range(3):
        samples.append(rss_kib(target.server.pid))
        await asyncio.sleep(0.5)
    return sorted(samples)[1]


async def one_run(project: Project, run: int, args: argparse.Namespace, compression: bool) -> dict[str, Any]:
    traced = (args.keep or project.workdir) / f"snapshot-{run}.bin" if args.tracemalloc else None
    target = await project.serve(run, compression, traced)
    config = replace(
        Config(**QUICK, targets=["project"], compression=compression),
        users=args.users,
        connect_batch=100 if traced is None else 25,
    )  # traced, the server is slow
    load = Load(target, config)
    result: dict[str, Any] = {"compression": compression}
    try:
        await load.ensure(args.low)
        result["rss_low_kib"] = await settled_rss(target, args.settle)
        snap_low = None
        if traced:
            os.kill(target.server.pid, signal.SIGUSR2)
            snap_low = await take_snapshot(target.server, traced)
            if args.keep:
                traced.rename(traced.with_suffix(".low"))
        await load.ensure(args.high)
        result["rss_high_kib"] = await settled_rss(target, args.settle)
        snap_high = await take_snapshot(target.server, traced) if traced else None
        count = args.high - args.low
        result["kib_per_subscription"] = (result["rss_high_kib"] - result["rss_low_kib"]) / count
        if traced:
            traced_bytes, rows = top_sites(snap_low, snap_high, count, args.top, args.depth)
            result["traced_kib_per_subscription"] = traced_bytes / 1024
            result["top"] = rows
        if load.tracker.other_frames:
            result["other_frames"] = load.tracker.other_frames
    finally:
        await load.close()
        target.server.stop()
    return result


def show(mode: str, results: list[dict[str, Any]], traced: bool) -> None:
    per = [r["kib_per_subscription"] for r in results]
    label = "RSS (inflated by tracemalloc)" if traced else "RSS"
    spread = f"median {statistics.median(per):.1f}, min {min(per):.1f}, max {max(per):.1f}"
    print(f"\n## compression {mode}: {label} KiB per idle subscription: {spread}")
    print("runs: " + ", ".join(f"{p:.1f}" for p in per))
    for r in results:
        if "other_frames" in r:
            print(f"  unexpected frames: {r['other_frames'][:3]}")
    if traced:
        for i, r in enumerate(results):
            print(
                f"\nrun {i + 1}: tracemalloc sees {r['traced_kib_per_subscription']:.2f} KiB per subscription;"
                " top sites (bytes, blocks per subscription):"
            )
            for size, blocks, site in r["top"]:
                print(f"  {size:8.0f} B {blocks:6.1f}  {site}")


async def main_async(args: argparse.Namespace) -> None:
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compression]
    with tempfile.TemporaryDirectory(prefix="gql-api-idle-") as tmp:
        project = Project(Path(tmp), args.users)
        try:
            await project.start()
            run = 0
            for compression in modes:
                results = []
                for _ in range(args.repeat):
                    run += 1
                    log(f"run {run}: compression {'on' if compression else 'off'}, {args.low} -> {args.high}")
                    result = await one_run(project, run, args, compression)
                    log(f"  {result['kib_per_subscription']:.1f} KiB per subscription")
                    results.append(result)
                show("on" if compression else "off", results, args.tracemalloc)
        finally:
            project.stop()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-traced"]:
        serve_traced(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="idle_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--low", type=int, default=500, help="subscriptions at the first measurement (default 500)")
    parser.add_argument("--high", type=int, default=2500, help="subscriptions at the second (default 2500)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per compression mode (default 3)")
    parser.add_argument(
        "--compression",
        choices=["off", "on", "both"],
        default="off",
        help="subscribers offer permessage-deflate and the server accepts it (default off)",
    )
    parser.add_argument(
        "--tracemalloc", action="store_true", help="report the top allocation sites instead of clean RSS"
    )
    parser.add_argument("--top", type=int, default=25, help="allocation sites to list (default 25)")
    parser.add_argument("--depth", type=int, default=2, help="callers shown for each site (default 2)")
    parser.add_argument("--keep", type=Path, help="keep the tracemalloc snapshots in this directory")
    parser.add_argument("--users", type=int, default=500, help="users the subscribers take turns among (default 500)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading RSS (default 2)")
    args = parser.parse_args(argv)
    if args.high <= args.low:
        parser.error("--high must be more than --low")
    raise_nofile()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
