"""The live-delivery benchmark's command line: the project against its peers, one report.

    python bench/run.py                     # the full run (a few minutes)
    python bench/run.py --quick             # a small smoke run (about a minute)
    python bench/run.py --compression both  # every measurement with and without permessage-deflate

This process is the load generator; each server under test runs in its own process:

- project:  ``python -m gql_api serve`` on a fresh temporary ``GQL_API_DATA_DIR`` with the
  embedded database (started by the benchmark first, to seed history, then reused by ``serve``);
- baseline: ``python bench/baseline.py`` (see its docstring);
- node:     ``node bench/node_peer/server.js`` (see its header), when Node.js is installed.

The modules: bench.config (what to run), bench.processes (the servers' processes, CPU, memory),
bench.clients (HTTP client, websocket subscribers), bench.targets (starting each server),
bench.scenarios (the measurements), bench.report (the tables). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import FULL, QUICK, Config
from bench.processes import log, machine, py_spy, raise_nofile
from bench.report import compression_label, report
from bench.scenarios import bench_target
from bench.targets import STARTERS, node_unavailable

COMPRESSION = {"on": [True], "off": [False], "both": [True, False]}


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Benchmark live delivery: the project vs a plain Strawberry baseline and a Node.js peer.",
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (about a minute)")
    parser.add_argument(
        "--targets",
        default="project,baseline,node",
        help="comma-separated: project, baseline, node (default all; node only if installed)",
    )
    parser.add_argument("--sizes", type=_ints, help="fan-out subscriber counts (default 100,1000,5000)")
    parser.add_argument("--messages", type=_ints, help="messages per fan-out size (default 100,100,20)")
    parser.add_argument("--window", type=int, help="messages in flight in fan-out runs (default 4)")
    parser.add_argument("--rate-subscribers", type=int, help="subscribers in the fixed-rate run (1000)")
    parser.add_argument("--rate", type=float, help="messages per second in the fixed-rate run (20)")
    parser.add_argument("--rate-seconds", type=float, help="length of the fixed-rate run (10)")
    parser.add_argument("--memory", type=_ints, help="LOW,HIGH idle subscriptions for memory (1000,5000)")
    parser.add_argument("--senders", type=int, help="concurrent sendChatMessage senders (50)")
    parser.add_argument("--send-seconds", type=float, help="length of each send-throughput run (5)")
    parser.add_argument("--history", type=_ints, help="history stream sizes (1000,50000)")
    parser.add_argument(
        "--compression",
        choices=sorted(COMPRESSION),
        default="on",
        help="subscribers offer permessage-deflate, as browsers do (on, the default), "
        "do not (off), or every measurement is run both ways (both)",
    )
    parser.add_argument(
        "--no-compression", dest="compression", action="store_const", const="off", help="the same as --compression off"
    )
    parser.add_argument(
        "--ws-compression",
        action="store_true",
        help="the project accepts the permessage-deflate its subscribers offer (WS_COMPRESSION=on; "
        "off by default, as the project's own default)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run the project as `gql-api serve --workers N` (default 1: one process)",
    )
    parser.add_argument(
        "--only",
        choices=["all", "writes"],
        default="all",
        help="run every phase (all, the default), or only the write phases of the project: "
        "sendChatMessage in one stream and in many, and raw insert_one (writes)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        help="record each phase of each server (and the embedded database) with py-spy into DIR",
    )
    parser.add_argument(
        "--profile-format",
        default="flamegraph",
        choices=["flamegraph", "speedscope", "raw"],
        help="py-spy output format (default flamegraph: an SVG per phase)",
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="include native frames (shows time in the garbage collector, C extensions)",
    )
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(QUICK if args.quick else FULL)
    for name in (
        "sizes",
        "messages",
        "window",
        "rate_subscribers",
        "rate",
        "rate_seconds",
        "senders",
        "send_seconds",
        "history",
    ):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.memory:
        values["memory_low"], values["memory_high"] = args.memory
    if len(values["messages"]) != len(values["sizes"]) or (args.sizes and not args.messages):
        values["messages"] = [max(8, min(100, 30_000 // size)) for size in values["sizes"]]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.only == "writes":  # the write phases are the project's, and need no seeded history
        targets, values["history"] = ["project"], []
    unknown = set(targets) - set(STARTERS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    config = Config(
        **values,
        targets=targets,
        compression=COMPRESSION[args.compression][0],
        ws_compression=args.ws_compression,
        workers=args.workers,
        profile_dir=args.profile,
        profile_format=args.profile_format,
        profile_native=args.profile_native,
        writes_only=args.only == "writes",
    )
    if config.profile_dir is not None:
        if py_spy() is None:
            parser.error("--profile needs py-spy (pip install py-spy)")
        config.profile_dir.mkdir(parents=True, exist_ok=True)
    return config, args


async def main_async(config: Config, args: argparse.Namespace) -> int:
    raise_nofile()
    info = machine()
    skipped: dict[str, str] = {}
    if "node" in config.targets:
        reason = node_unavailable()
        if reason is None:
            info["node"] = _node_version()
        else:
            log(f"the Node.js peer is not run: {reason}")
            skipped["node"] = reason
            config = replace(config, targets=[t for t in config.targets if t != "node"])
    info["skipped"] = skipped
    # One pass per compression mode; the project-only phases (writes, history) do not depend on
    # it and run in the first pass only.
    passes = [
        replace(config, compression=mode, writes_and_history=i == 0)
        for i, mode in enumerate(COMPRESSION[args.compression])
    ]
    workdir = Path(tempfile.mkdtemp(prefix="gql-api-bench-"))
    runs: list[tuple[Config, dict[str, dict[str, Any]]]] = []
    started = time.perf_counter()
    try:
        for bench_pass in passes:
            label = compression_label(bench_pass.compression)
            passdir = workdir / label
            passdir.mkdir()
            results: dict[str, dict[str, Any]] = {}
            runs.append((bench_pass, results))
            for name in bench_pass.targets:
                gc.collect()
                if len(passes) > 1:
                    log(f"== websocket compression: {label}")
                results[name] = await bench_target(name, bench_pass, passdir)
    finally:
        keep = any("error" in r for _, rs in runs for t in rs.values() for r in t.values() if isinstance(r, dict))
        if keep:
            log(f"server logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info["seconds"] = round(time.perf_counter() - started, 1)
    print(report(info, runs))
    print(f"\n(whole run: {info['seconds']} s)")
    if args.json:
        raw = {
            "machine": info,
            "config": config.__dict__,
            "runs": {compression_label(c.compression): results for c, results in runs},
        }
        Path(args.json).write_text(json.dumps(raw, indent=2, default=str))
    return 0


def _node_version() -> str:
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip().removeprefix("v")


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(config, args))
    return uvloop.run(main_async(config, args))


if __name__ == "__main__":
    sys.exit(main())
