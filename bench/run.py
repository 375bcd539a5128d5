"""The live-delivery benchmark: the project against a plain-Strawberry baseline, one table.

    python bench/run.py            # the full run (a few minutes)
    python bench/run.py --quick    # a small smoke run (about a minute)

This process is the load generator; each server under test runs in its own process:

- project:  ``python -m gql_api serve`` on a fresh temporary ``GQL_API_DATA_DIR`` with the
  embedded database (started by the benchmark first, to seed history, then reused by ``serve``);
- baseline: ``python bench/baseline.py`` (see its docstring).

Subscribers are raw websocket clients speaking graphql-transport-ws by hand, one subscription per
connection. Every chat message carries a key in its content; the generator records when it issued
the ``sendChatMessage`` for that key and when each subscriber received it. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` from a checkout
    sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
from bson import ObjectId  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

SUBSCRIPTION = (
    "subscription Live($s: ID!) { messageAdded(streamId: $s) "
    "{ id kind content cursor createdAt sender { id username name surname } } }"
)
SEND = "mutation Send($s: ID!, $c: String!) { sendChatMessage(streamId: $s, content: $c) { id cursor } }"
CREATE_STREAM = "mutation Create($t: String!) { createLiveStream(title: $t) { id } }"
HISTORY = (
    "query History($s: ID!, $b: String) { chatMessages(streamId: $s, last: 50, before: $b) { "
    "edges { cursor node { id kind content createdAt sender { id username name surname } } } "
    "pageInfo { hasPreviousPage hasNextPage startCursor endCursor } } }"
)
CONTENT_PREFIX = "bench-"
MARK = '"content":"' + CONTENT_PREFIX


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- configuration ----------------------------------------------------------------------------


@dataclass
class Config:
    sizes: list[int]  # fan-out subscriber counts
    messages: list[int]  # messages sent per fan-out size
    window: int  # messages in flight during a fan-out run
    rate_subscribers: int
    rate: float
    rate_seconds: float
    drain_seconds: float
    memory_low: int
    memory_high: int
    senders: int
    send_seconds: float
    history: list[int]
    history_queries: int
    targets: list[str]
    compression: bool
    users: int = 500  # senders and viewers take turns among this many users
    profile_dir: Path | None = None
    profile_format: str = "flamegraph"
    profile_native: bool = False
    connect_batch: int = 100
    settle_seconds: float = 2.0
    warmup_subscribers: int = 200


FULL = dict(
    sizes=[100, 1000, 5000], messages=[100, 30, 10], window=4,
    rate_subscribers=1000, rate=20.0, rate_seconds=10.0, drain_seconds=5.0,
    memory_low=1000, memory_high=5000,
    senders=50, send_seconds=5.0,
    history=[1000, 50_000], history_queries=60,
)
QUICK = dict(
    sizes=[50, 200, 600], messages=[30, 15, 8], window=4,
    rate_subscribers=200, rate=20.0, rate_seconds=3.0, drain_seconds=3.0,
    memory_low=200, memory_high=600,
    senders=50, send_seconds=2.0,
    history=[1000, 5000], history_queries=20,
)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="bench", description="Benchmark live delivery: the project vs a plain Strawberry baseline."
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (about a minute)")
    parser.add_argument("--targets", default="project,baseline", help="comma-separated: project, baseline")
    parser.add_argument("--sizes", type=_ints, help="fan-out subscriber counts (default 100,1000,5000)")
    parser.add_argument("--messages", type=_ints, help="messages per fan-out size (default 100,30,10)")
    parser.add_argument("--window", type=int, help="messages in flight in fan-out runs (default 4)")
    parser.add_argument("--rate-subscribers", type=int, help="subscribers in the fixed-rate run (1000)")
    parser.add_argument("--rate", type=float, help="messages per second in the fixed-rate run (20)")
    parser.add_argument("--rate-seconds", type=float, help="length of the fixed-rate run (10)")
    parser.add_argument("--memory", type=_ints, help="LOW,HIGH idle subscriptions for memory (1000,5000)")
    parser.add_argument("--senders", type=int, help="concurrent sendChatMessage senders (50)")
    parser.add_argument("--send-seconds", type=float, help="length of each send-throughput run (5)")
    parser.add_argument("--history", type=_ints, help="history stream sizes (1000,50000)")
    parser.add_argument("--compression", action="store_true",
                        help="offer permessage-deflate like browsers do (default: off)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    parser.add_argument("--profile", metavar="DIR", type=Path,
                        help="record each phase of each server (and the embedded database) with py-spy into DIR")
    parser.add_argument("--profile-format", default="flamegraph", choices=["flamegraph", "speedscope", "raw"],
                        help="py-spy output format (default flamegraph: an SVG per phase)")
    parser.add_argument("--profile-native", action="store_true",
                        help="include native frames (shows time in the garbage collector, C extensions)")
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(QUICK if args.quick else FULL)
    for name in ("sizes", "messages", "window", "rate_subscribers", "rate", "rate_seconds",
                 "senders", "send_seconds", "history"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.memory:
        values["memory_low"], values["memory_high"] = args.memory
    if len(values["messages"]) != len(values["sizes"]) or (args.sizes and not args.messages):
        values["messages"] = [max(8, min(100, 30_000 // size)) for size in values["sizes"]]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - {"project", "baseline"}
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    config = Config(**values, targets=targets, compression=args.compression,
                    profile_dir=args.profile, profile_format=args.profile_format,
                    profile_native=args.profile_native)
    if config.profile_dir is not None:
        if _py_spy() is None:
            parser.error("--profile needs py-spy (pip install py-spy)")
        config.profile_dir.mkdir(parents=True, exist_ok=True)
    return config, args


def _py_spy() -> str | None:
    return shutil.which("py-spy") or next(
        (str(p) for p in [Path(sys.executable).parent / "py-spy"] if p.exists()), None
    )


class Profiler:
    """py-spy recording the server (and its database) while one phase runs."""

    EXTENSIONS = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}

    def __init__(self, config: Config, target_name: str, pids: dict[str, int | None]) -> None:
        self.config, self.target_name, self.pids = config, target_name, pids
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, label: str) -> None:
        assert self.config.profile_dir is not None
        exe = _py_spy()
        assert exe is not None
        for role, pid in self.pids.items():
            if pid is None:
                continue
            out = self.config.profile_dir / (
                f"{self.target_name}-{label}-{role}.{self.EXTENSIONS[self.config.profile_format]}"
            )
            self.processes.append(subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--rate", "100",
                 "--format", self.config.profile_format, "--output", str(out),
                 *(["--native"] if self.config.profile_native else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))

    def stop(self) -> None:
        processes, self.processes = self.processes, []
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


# -- processes --------------------------------------------------------------------------------


def raise_nofile() -> None:
    """Allow thousands of sockets: raise the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 when unknown or gone); this process for None."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


class ServerProcess:
    """A server under test, in its own process, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 90.0) -> None:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=raise_nofile, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while "Uvicorn running on" not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"{self.name} server did not start:\n{tail}")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- a minimal keep-alive HTTP/1.1 client (cheap enough not to be the bottleneck) --------------


class Http:
    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.head = f"POST /graphql HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, query: str, variables: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        """The response body of one GraphQL operation (as ``token``'s user, else this client's);
        reconnects once if the server hung up."""
        body = json.dumps({"query": query, "variables": variables}).encode()
        head = f"{self.head}Authorization: {token or self.token}\r\nContent-Length: {len(body)}\r\n\r\n"
        for attempt in (1, 2):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                assert self.reader is not None
                self.writer.write(head.encode() + body)
                head = await self.reader.readuntil(b"\r\n\r\n")
                length = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    raise RuntimeError(f"no content-length in {head!r}")
                return json.loads(await self.reader.readexactly(length))
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def data(self, query: str, variables: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        body = await self.post(query, variables, token)
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


# -- subscribers and what they receive ------------------------------------------------------


class Message:
    """One sent chat message: when it was issued, and when each subscriber received it."""

    __slots__ = ("sent", "latencies", "expected", "done", "marker")

    def __init__(self, expected: int, marker: bool = False) -> None:
        self.sent = 0.0
        self.latencies: list[float] = []
        self.expected = expected
        self.done = asyncio.Event()
        self.marker = marker


class Subscriber:
    __slots__ = ("ws", "task", "marked", "ended")

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.task: asyncio.Task[None] | None = None
        self.marked = False
        self.ended = False  # the server ended the subscription (error, complete) or the socket


class Tracker:
    """Routes every received event to its message by the key in its content."""

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self.marked = 0
        self.want_marked = 0
        self.all_marked = asyncio.Event()
        self.other_frames: list[str] = []

    def register(self, key: str, expected: int, marker: bool = False) -> Message:
        message = self.messages[key] = Message(expected, marker)
        return message

    def forget(self, keys: list[str]) -> None:
        for key in keys:
            self.messages.pop(key, None)

    def received(self, subscriber: Subscriber, text: str, now: float) -> bool:
        """Record a chat event; False for any other frame."""
        start = text.find(MARK)
        if start < 0:
            return False
        start += len(MARK)
        message = self.messages.get(text[start : text.find('"', start)])
        if message is None:
            return True
        if message.marker:
            if not subscriber.marked:
                subscriber.marked = True
                self.marked += 1
                if self.marked >= self.want_marked:
                    self.all_marked.set()
            return True
        latencies = message.latencies
        latencies.append(now - message.sent)
        if len(latencies) >= message.expected:
            message.done.set()
        return True

    def other(self, text: str) -> None:
        if len(self.other_frames) < 20:
            self.other_frames.append(text[:300])


PONG = json.dumps({"type": "pong"})


async def _read(subscriber: Subscriber, tracker: Tracker) -> None:
    clock = time.perf_counter
    ws = subscriber.ws
    try:
        async for text in ws:
            if not tracker.received(subscriber, text, clock()):
                try:
                    kind = json.loads(text).get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind == "ping":  # graphql-transport-ws keep-alive: answer as clients must
                    await ws.send(PONG)
                elif kind != "pong":
                    if kind in ("error", "complete"):
                        subscriber.ended = True
                    tracker.other(text)
    except ConnectionClosed as exc:
        if exc.rcvd is not None and exc.rcvd.code not in (1000, 1001):
            tracker.other(f"closed by the server: {exc.rcvd.code} {exc.rcvd.reason}")
    finally:
        subscriber.ended = True


@dataclass
class Target:
    """A running server under test and how to reach it."""

    name: str
    server: ServerProcess
    host: str
    port: int
    tokens: list[str]
    stream_id: str
    db_pid: int | None = None
    mongo_uri: str | None = None
    mongo_db: str | None = None
    history_streams: dict[int, str] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/graphql"

    def http(self, user: int = 0) -> Http:
        return Http(self.host, self.port, self.tokens[user % len(self.tokens)])

    def next_token(self) -> str:
        """Senders take turns, so no user comes near the project's per-user rate limit."""
        self._turn = getattr(self, "_turn", -1) + 1
        return self.tokens[self._turn % len(self.tokens)]


class Load:
    """The load generator's state for one target: its subscribers and a sender."""

    def __init__(self, target: Target, config: Config) -> None:
        self.target = target
        self.config = config
        self.tracker = Tracker()
        self.subscribers: list[Subscriber] = []
        self.sender = target.http(0)
        self._keys = itertools.count()
        self._opened = 0
        self.reopened = 0  # subscriptions the server ended before they were live, opened again

    def key(self, label: str) -> str:
        return f"{label}-{next(self._keys)}"

    async def _open_one(self) -> Subscriber:
        token = self.target.tokens[self._opened % len(self.target.tokens)]
        self._opened += 1
        error: Exception | None = None
        for attempt in range(3):
            try:
                ws = await ws_connect(
                    self.target.ws_url,
                    subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                    compression="deflate" if self.config.compression else None,
                    proxy=None,
                    ping_interval=None,
                    open_timeout=60,
                    close_timeout=5,
                    max_queue=None,
                )
                await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
                ack = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if ack.get("type") != "connection_ack":
                    raise RuntimeError(f"no connection_ack: {ack}")
                await ws.send(json.dumps({
                    "id": "1", "type": "subscribe",
                    "payload": {"query": SUBSCRIPTION, "variables": {"s": self.target.stream_id}},
                }))
                subscriber = Subscriber(ws)
                subscriber.task = asyncio.create_task(_read(subscriber, self.tracker))
                return subscriber
            except (OSError, TimeoutError, ConnectionClosed, RuntimeError) as exc:
                error = exc
                await asyncio.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"could not open a subscription: {error!r}")

    async def _close_one(self, subscriber: Subscriber) -> None:
        try:
            await asyncio.wait_for(subscriber.ws.close(), 10)
        except (TimeoutError, OSError, ConnectionClosed):
            subscriber.ws.transport.abort()
        if subscriber.task is not None:
            subscriber.task.cancel()
            await asyncio.gather(subscriber.task, return_exceptions=True)

    async def ensure(self, count: int) -> None:
        """Have exactly ``count`` live subscriptions, each proven by receiving a marker message."""
        batch = self.config.connect_batch
        if len(self.subscribers) > count:
            closing, self.subscribers = self.subscribers[count:], self.subscribers[:count]
            for i in range(0, len(closing), 500):
                await asyncio.gather(*(self._close_one(s) for s in closing[i : i + 500]))
        started = time.perf_counter()
        while len(self.subscribers) < count:
            size = min(batch, count - len(self.subscribers))
            self.subscribers += await asyncio.gather(*(self._open_one() for _ in range(size)))
        if self._opened and count:
            log(f"  {count} subscriptions open ({time.perf_counter() - started:.1f}s)")
        if count:
            await self.confirm()

    async def confirm(self, timeout: float = 120.0) -> None:
        """Send marker messages until every subscriber has received one (all are subscribed)."""
        tracker = self.tracker
        for subscriber in self.subscribers:
            subscriber.marked = False
        tracker.marked, tracker.want_marked = 0, len(self.subscribers)
        tracker.all_marked.clear()
        deadline = time.perf_counter() + timeout
        keys = []
        while not tracker.all_marked.is_set():
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {tracker.marked} of {len(self.subscribers)} subscribers are live")
            key = self.key("mk")
            keys.append(key)
            tracker.register(key, len(self.subscribers), marker=True)
            await self.sender.data(SEND, {"s": self.target.stream_id, "c": CONTENT_PREFIX + key},
                                   self.target.next_token())
            try:
                await asyncio.wait_for(tracker.all_marked.wait(), 3 + len(self.subscribers) / 1000)
            except TimeoutError:
                pass
            # A subscription the server ended (an error under a burst of connections, say) is
            # opened again, as a client would; too many of them fail the phase.
            dead = [i for i, s in enumerate(self.subscribers) if s.ended and not s.marked]
            if dead and not tracker.all_marked.is_set():
                self.reopened += len(dead)
                if self.reopened > max(10, len(self.subscribers) // 20):
                    raise RuntimeError(f"{self.reopened} subscriptions ended by the server; see the frames")
                log(f"  opening {len(dead)} ended subscriptions again")
                for i in dead:
                    await self._close_one(self.subscribers[i])
                    self.subscribers[i] = await self._open_one()
        tracker.forget(keys)

    async def close(self) -> None:
        await self.ensure(0)
        await self.sender.close()


# -- measurements ------------------------------------------------------------------------------


def percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class CpuMeter:
    """CPU used by the server, its database and this load generator over a measurement."""

    def __init__(self, target: Target) -> None:
        self.pids = {"server": target.server.pid, "db": target.db_pid, "generator": None}
        self.start = {k: cpu_seconds(p) if k == "generator" or p else 0.0 for k, p in self.pids.items()}
        self.t0 = time.perf_counter()

    def cores(self) -> dict[str, float]:
        elapsed = max(1e-9, time.perf_counter() - self.t0)
        return {
            k: round(((cpu_seconds(p) if k == "generator" or p else 0.0) - self.start[k]) / elapsed, 2)
            for k, p in self.pids.items()
        }


async def wait_idle(target: Target, limit: float = 30.0) -> None:
    """Wait (up to ``limit`` s) until the server uses under 0.15 cores: the previous phase's
    work (closing thousands of sockets, a backlog) must not count against the next."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        before = cpu_seconds(target.server.pid)
        await asyncio.sleep(0.5)
        if cpu_seconds(target.server.pid) - before < 0.075:
            return


async def fanout(load: Load, n_messages: int) -> dict[str, Any]:
    """Send ``n_messages`` to the stream with ``window`` in flight; time every delivery."""
    subscribers = len(load.subscribers)
    semaphore = asyncio.Semaphore(load.config.window)
    deadline = time.perf_counter() + 60 + subscribers * n_messages / 500
    messages: list[Message] = []
    waiters: list[asyncio.Task[None]] = []
    keys: list[str] = []

    async def wait_delivered(message: Message) -> None:
        try:
            await asyncio.wait_for(message.done.wait(), max(0.1, deadline - time.perf_counter()))
        except TimeoutError:
            pass
        finally:
            semaphore.release()

    await wait_idle(load.target)
    meter = CpuMeter(load.target)
    send_latencies = []
    for _ in range(n_messages):
        await semaphore.acquire()
        key = load.key("f")
        keys.append(key)
        message = load.tracker.register(key, subscribers)
        messages.append(message)
        message.sent = time.perf_counter()
        await load.sender.data(SEND, {"s": load.target.stream_id, "c": CONTENT_PREFIX + key},
                               load.target.next_token())
        send_latencies.append(time.perf_counter() - message.sent)
        waiters.append(asyncio.create_task(wait_delivered(message)))
    await asyncio.gather(*waiters)
    cores = meter.cores()
    load.tracker.forget(keys)
    latencies = sorted(itertools.chain.from_iterable(m.latencies for m in messages))
    delivered = len(latencies)
    end = max(m.sent + max(m.latencies) for m in messages if m.latencies) if delivered else messages[0].sent
    elapsed = max(1e-9, end - messages[0].sent)
    server_cpu = cores["server"] * (time.perf_counter() - meter.t0)
    return {
        "subscribers": subscribers,
        "messages": n_messages,
        "expected": subscribers * n_messages,
        "delivered": delivered,
        "seconds": round(elapsed, 3),
        "deliveries_per_s": delivered / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": (latencies[-1] if latencies else math.nan) * 1000,
        "send_p50_ms": percentile(sorted(send_latencies), 50) * 1000,
        "cpu_cores": cores,
        "server_cpu_us_per_delivery": server_cpu / delivered * 1e6 if delivered else math.nan,
    }


async def fixed_rate(load: Load) -> dict[str, Any]:
    """Send at a fixed rate (each send on time, on its own connection); time every delivery."""
    config = load.config
    subscribers = len(load.subscribers)
    total = int(config.rate * config.rate_seconds)
    pool: asyncio.Queue[Http] = asyncio.Queue()
    for i in range(16):
        pool.put_nowait(load.target.http(i))
    messages: list[Message] = []
    keys: list[str] = []
    await wait_idle(load.target)
    start = time.perf_counter() + 0.2
    meter = CpuMeter(load.target)

    async def send(i: int) -> None:
        await asyncio.sleep(max(0.0, start + i / config.rate - time.perf_counter()))
        key = load.key("r")
        keys.append(key)
        message = load.tracker.register(key, subscribers)
        messages.append(message)
        message.sent = time.perf_counter()
        http = await pool.get()
        try:
            await http.data(SEND, {"s": load.target.stream_id, "c": CONTENT_PREFIX + key},
                            load.target.next_token())
        except BaseException:
            await http.close()  # cancelled mid-request: the connection is in an unknown state
            raise
        finally:
            pool.put_nowait(http)

    # Bounded in time even when the server falls behind: whatever is not delivered by the
    # deadline (sends included) is lost.
    sends = [asyncio.create_task(send(i)) for i in range(total)]
    deadline = start + config.rate_seconds + config.drain_seconds
    while time.perf_counter() < deadline:
        if all(t.done() for t in sends) and all(m.done.is_set() for m in messages):
            break
        await asyncio.sleep(0.05)
    for task in sends:
        task.cancel()
    await asyncio.gather(*sends, return_exceptions=True)
    last_sent = max((m.sent for m in messages), default=start)
    cores = meter.cores()
    load.tracker.forget(keys)
    while not pool.empty():
        await pool.get_nowait().close()
    latencies = sorted(itertools.chain.from_iterable(m.latencies for m in messages))
    expected = subscribers * total
    missing = expected - len(latencies)
    ordered = latencies + [math.inf] * missing
    return {
        "subscribers": subscribers,
        "rate": config.rate,
        "seconds": config.rate_seconds,
        "expected": expected,
        "delivered": len(latencies),
        "delivered_fraction": len(latencies) / expected if expected else math.nan,
        "drain_limit_s": config.drain_seconds,
        "sends_issued": len(messages),
        "send_span_s": round(last_sent - start, 2),
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "max_ms": (ordered[-1] if ordered else math.nan) * 1000,
        "cpu_cores": cores,
    }


async def memory(load: Load) -> dict[str, Any]:
    """RSS of the server with ``memory_low`` and then ``memory_high`` idle subscriptions."""
    config = load.config

    async def settled_rss() -> int:
        await wait_idle(load.target)
        await asyncio.sleep(config.settle_seconds)
        samples = []
        for _ in range(3):
            samples.append(rss_kib(load.target.server.pid))
            await asyncio.sleep(0.5)
        return sorted(samples)[1]

    await load.ensure(config.memory_low)
    low = await settled_rss()
    await load.ensure(config.memory_high)
    high = await settled_rss()
    return {
        "low": config.memory_low,
        "high": config.memory_high,
        "rss_low_kib": low,
        "rss_high_kib": high,
        "kib_per_subscription": (high - low) / (config.memory_high - config.memory_low),
    }


async def run_timed(workers: int, seconds: float, work: Callable[[int], Awaitable[None]]) -> tuple[list[float], int, float]:
    """Run ``work(worker)`` in a loop in ``workers`` tasks for ``seconds``; latencies, errors, elapsed."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def loop(worker: int) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await work(worker)
            except Exception:  # noqa: BLE001 - counted and reported
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(workers)))
    return sorted(latencies), errors, time.perf_counter() - started


def _rate_summary(latencies: list[float], errors: int, elapsed: float, meter: CpuMeter) -> dict[str, Any]:
    return {
        "operations": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "cpu_cores": meter.cores(),
    }


async def send_throughput(target: Target, config: Config, streams: list[str]) -> dict[str, Any]:
    """``senders`` concurrent clients, each sending sendChatMessage back to back."""
    clients = [target.http(i) for i in range(config.senders)]
    counter = itertools.count()

    async def send(worker: int) -> None:
        await clients[worker].data(
            SEND, {"s": streams[worker % len(streams)], "c": f"throughput {next(counter)}"},
            target.next_token(),
        )

    await asyncio.gather(*(send(w) for w in range(config.senders)))  # connect and warm up
    await wait_idle(target)
    meter = CpuMeter(target)
    latencies, errors, elapsed = await run_timed(config.senders, config.send_seconds, send)
    result = _rate_summary(latencies, errors, elapsed, meter)
    for client in clients:
        await client.close()
    return result


async def raw_inserts(target: Target, config: Config) -> dict[str, Any]:
    """The ceiling: pymongo insert_one of ChatMessage-shaped documents into the same database."""
    from pymongo import AsyncMongoClient

    from gql_api.documents import ChatMessage

    assert target.mongo_uri and target.mongo_db
    client: AsyncMongoClient = AsyncMongoClient(target.mongo_uri, tz_aware=True, maxPoolSize=config.senders)
    collection = client[target.mongo_db][ChatMessage.Settings.name]
    stream_id = str(ObjectId())
    seqs = itertools.count(1)
    sender = _profile(str(ObjectId()), "raw", "Raw", "Inserter")

    async def insert(worker: int) -> None:
        seq = next(seqs)
        await collection.insert_one(_message_document(stream_id, seq, sender, f"raw {seq}"))

    try:
        await asyncio.gather(*(insert(w) for w in range(config.senders)))
        await wait_idle(target)
        meter = CpuMeter(target)
        latencies, errors, elapsed = await run_timed(config.senders, config.send_seconds, insert)
        return _rate_summary(latencies, errors, elapsed, meter)
    finally:
        await client.close()


async def history_latency(target: Target, config: Config) -> dict[str, Any]:
    """``chatMessages(last: 50, before: ...)`` pages deep in seeded streams, one at a time."""
    from gql_api.pagination import encode_cursor

    http = target.http(0)
    results: dict[str, Any] = {}
    try:
        for size, stream_id in sorted(target.history_streams.items()):
            positions = [size // 2, size // 4, 3 * size // 4, 60]  # middle, quarters, near the oldest
            for seq in positions:  # warm up, and check the page is right
                data = await http.data(HISTORY, {"s": stream_id, "b": encode_cursor(seq)})
                edges = data["chatMessages"]["edges"]
                expected = list(range(max(1, seq - 50), seq))
                got = [int(e["node"]["content"].split()[-1]) for e in edges]
                if got != expected:
                    raise RuntimeError(f"history page before {seq} of {size}: got {got[:3]}..{got[-3:]}")
            latencies = []
            for i in range(config.history_queries):
                seq = positions[i % len(positions)]
                started = time.perf_counter()
                await http.data(HISTORY, {"s": stream_id, "b": encode_cursor(seq)})
                latencies.append(time.perf_counter() - started)
            latencies.sort()
            results[str(size)] = {
                "messages": size,
                "queries": len(latencies),
                "p50_ms": percentile(latencies, 50) * 1000,
                "p99_ms": percentile(latencies, 99) * 1000,
            }
    finally:
        await http.close()
    return results


# -- the targets -------------------------------------------------------------------------------


def _profile(user_id: str, username: str, name: str, surname: str) -> dict[str, Any]:
    return {"id": user_id, "username": username, "name": name, "surname": surname,
            "profile_photo": None, "availability_status": "available"}


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _message_document(stream_id: str, seq: int, sender: dict[str, Any], content: str) -> dict[str, Any]:
    now = _now()
    return {
        "stream_id": stream_id, "seq": seq, "kind": "TEXT", "content": content, "sender": sender,
        "client_message_id": None, "dedup_key": f"r:{ObjectId()}", "created_at": now, "updated_at": now,
    }


async def seed(uri: str, db_name: str, sizes: list[int], users: int) -> tuple[dict[int, str], list[str]]:
    """Create ``users`` users, and one LIVE stream per size with that many messages (seq 1..N)
    by raw inserts; return the streams by size and the user ids."""
    from beanie import init_beanie
    from pymongo import AsyncMongoClient

    from gql_api.documents import DOCUMENT_MODELS, ChatMessage, LiveStream, User

    client: AsyncMongoClient = AsyncMongoClient(uri, tz_aware=True)
    streams: dict[int, str] = {}
    try:
        database = client[db_name]
        await init_beanie(database=database, document_models=DOCUMENT_MODELS)  # the indexes
        pool = [User(username=f"bench{i:04d}", name="Bench", surname=f"Viewer{i}") for i in range(users)]
        user_ids = [str(i) for i in (await User.insert_many(pool)).inserted_ids]
        owner = _profile(str(ObjectId()), "bench-owner", "Bench", "Owner")
        sender = _profile(str(ObjectId()), "bench-history", "Bench", "History")
        for size in sizes:
            stream_id = ObjectId()
            started = time.perf_counter()
            await database[LiveStream.Settings.name].insert_one({
                "_id": stream_id, "title": f"bench history {size}", "owner": owner, "status": "LIVE",
                "superlike_count": 0, "last_seq": size, "created_at": _now(), "ended_at": None,
            })
            for first in range(1, size + 1, 5000):
                await database[ChatMessage.Settings.name].insert_many([
                    _message_document(str(stream_id), seq, sender, f"history {seq}")
                    for seq in range(first, min(size, first + 4999) + 1)
                ])
            streams[size] = str(stream_id)
            log(f"  seeded a stream with {size} messages ({time.perf_counter() - started:.1f}s)")
    finally:
        await client.close()
    if len(user_ids) != users:
        raise RuntimeError(f"seeded {users} users but found {len(user_ids)}")
    return streams, user_ids


def _base_env() -> dict[str, str]:
    """This environment without the project's settings: the servers run on their defaults."""
    from gql_api.settings import Settings

    drop = {name.upper() for name in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k.upper() not in drop}


async def start_project(config: Config, workdir: Path) -> tuple[Target, Callable[[], None]]:
    from gql_api.embedded import EmbeddedMongo

    data_dir = workdir / "project"
    data_dir.mkdir()
    embedded = EmbeddedMongo(data_dir)
    uri = await asyncio.to_thread(embedded.start)
    server: ServerProcess | None = None

    def stop() -> None:
        if server is not None:
            server.stop()
        embedded.stop()

    try:
        history, user_ids = await seed(uri, "gql_api", config.history, config.users)
        secret = secrets.token_urlsafe(48)
        env = {**_base_env(), "GQL_API_DATA_DIR": str(data_dir), "MONGODB_DB": "gql_api", "JWT_SECRET": secret}
        port = free_port()
        server = ServerProcess("project", [sys.executable, "-m", "gql_api", "serve", "--port", str(port)],
                               env, workdir / "project.log")
        await server.start()
        demo = subprocess.run(
            [sys.executable, "-m", "gql_api", "demo", "--json"], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=120, check=True,
        )
        data = json.loads(demo.stdout)
        tokens = _tokens(secret, user_ids)
        db_pid = int((data_dir / "nx-27017.pid").read_text())
        target = Target("project", server, "127.0.0.1", port, tokens, data["streamId"], db_pid=db_pid,
                        mongo_uri=uri, mongo_db="gql_api", history_streams=history)
        return target, stop
    except BaseException:
        stop()
        raise


def _tokens(secret: str, user_ids: list[str]) -> list[str]:
    """HS256 tokens as ``gql-api token`` issues them (sub, iat, exp), valid for the run."""
    now = datetime.now(UTC)
    claims = {"iat": now, "exp": now + timedelta(hours=2)}
    return [jwt.encode({"sub": uid, **claims}, secret, algorithm="HS256") for uid in user_ids]


async def start_baseline(config: Config, workdir: Path) -> tuple[Target, Callable[[], None]]:
    secret = secrets.token_urlsafe(48)
    profiles = {str(ObjectId()): {"username": f"bench{i:04d}", "name": "Bench", "surname": f"Viewer{i}"}
                for i in range(config.users)}
    users_file = workdir / "baseline-users.json"
    users_file.write_text(json.dumps(profiles))
    tokens = _tokens(secret, list(profiles))
    stream_id = str(ObjectId())
    env = {**_base_env(), "BENCH_JWT_SECRET": secret, "BENCH_USERS_FILE": str(users_file),
           "BENCH_STREAM_ID": stream_id}
    port = free_port()
    server = ServerProcess("baseline", [sys.executable, str(BENCH_DIR / "baseline.py"), "--port", str(port)],
                           env, workdir / "baseline.log")
    await server.start()
    return Target("baseline", server, "127.0.0.1", port, tokens, stream_id), server.stop


async def run_phase(
    results: dict[str, Any], name: str, work: Callable[[], Awaitable[Any]], profiler: Profiler | None = None
) -> Any:
    log(f"{name} ...")
    started = time.perf_counter()
    if profiler is not None:
        profiler.start(name)
    try:
        value = await work()
    except Exception as exc:  # noqa: BLE001 - a failed phase is reported, the run goes on
        log(f"{name} FAILED: {exc!r}")
        results[name] = {"error": repr(exc)}
        return None
    finally:
        if profiler is not None:
            profiler.stop()
    results[name] = value
    log(f"{name} done in {time.perf_counter() - started:.1f}s")
    return value


async def bench_target(name: str, config: Config, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    starter = start_project if name == "project" else start_baseline
    log(f"== {name}: starting")
    try:
        target, stop = await starter(config, workdir)
    except Exception as exc:  # noqa: BLE001 - reported; the other target still runs
        log(f"== {name}: could not start: {exc}")
        return {"start": {"error": repr(exc)}}
    load = Load(target, config)
    profiler = None
    if config.profile_dir is not None:
        profiler = Profiler(config, name, {"server": target.server.pid, "db": target.db_pid})

    async def phase(results: dict[str, Any], label: str, work: Callable[[], Awaitable[Any]]) -> Any:
        return await run_phase(results, label, work, profiler)

    try:
        results["rss_start_kib"] = rss_kib(target.server.pid)

        async def warm_up() -> dict[str, Any]:
            await load.ensure(config.warmup_subscribers)
            result = await fanout(load, 10)
            await load.ensure(0)
            return {"deliveries_per_s": result["deliveries_per_s"]}

        async def with_reset(work: Callable[[], Awaitable[Any]]) -> Any:
            try:
                return await work()
            except BaseException:
                await load.ensure(0)  # a broken phase must not leave load behind for the next
                raise

        await phase(results, "warmup", lambda: with_reset(warm_up))
        await phase(results, "memory", lambda: with_reset(lambda: memory(load)))
        rate_done = config.rate_subscribers <= 0 or config.rate <= 0
        for size, n_messages in sorted(zip(config.sizes, config.messages), reverse=True):
            async def run_fanout(size: int = size, n_messages: int = n_messages) -> dict[str, Any]:
                await load.ensure(size)
                return await fanout(load, n_messages)

            await phase(results, f"fanout_{size}", lambda: with_reset(run_fanout))
            if not rate_done and size == config.rate_subscribers:
                await phase(results, "fixed_rate", lambda: with_reset(lambda: fixed_rate(load)))
                await load.ensure(0)  # drop whatever an overloaded server still has queued
                rate_done = True
        if not rate_done:
            async def run_rate() -> dict[str, Any]:
                await load.ensure(config.rate_subscribers)
                return await fixed_rate(load)

            await phase(results, "fixed_rate", lambda: with_reset(run_rate))
        await load.close()
        if name == "project":
            async def many_streams() -> dict[str, Any]:
                http = target.http(2)
                streams = [(await http.data(CREATE_STREAM, {"t": f"bench {i}"}))["createLiveStream"]["id"]
                           for i in range(config.senders)]
                await http.close()
                return await send_throughput(target, config, streams)

            await phase(results, "send_one_stream", lambda: send_throughput(target, config, [target.stream_id]))
            await phase(results, "send_many_streams", many_streams)
            await phase(results, "raw_insert", lambda: raw_inserts(target, config))
            if target.history_streams:
                await phase(results, "history", lambda: history_latency(target, config))
        results["rss_end_kib"] = rss_kib(target.server.pid)
        results["reopened_subscriptions"] = load.reopened
        if load.tracker.other_frames:
            results["unexpected_frames"] = load.tracker.other_frames
    finally:
        try:
            await asyncio.wait_for(load.close(), 120)
        except Exception as exc:  # noqa: BLE001
            log(f"closing the load failed: {exc!r}")
        stop()
        log(f"== {name}: stopped")
    return results


# -- the report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def _ms(value: Any) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "lost"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _num(value: Any) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    return f"{value:,.0f}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def report(config: Config, info: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    project, baseline = results.get("project", {}), results.get("baseline", {})
    lines = [
        f"Benchmark {info['date']} on {info['cpus']} CPUs ({info['cpu']}), {info['memory_gib']} GiB, "
        f"{info['system']}, Python {info['python']}; load average at start "
        + ", ".join(f"{x:.2f}" for x in info["loadavg_at_start"]) + ".",
        f"Websocket compression: {'permessage-deflate' if config.compression else 'off'}.",
        "",
        f"**Fan-out**: one stream, N subscribers (one per websocket), {config.window} messages in flight; "
        "latency = sendChatMessage issued -> event received.",
        "",
        "| subscribers | project deliveries/s | p50 ms | p99 ms | baseline deliveries/s | p50 ms | p99 ms "
        "| ratio | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size in sorted(config.sizes):
        p, b = project.get(f"fanout_{size}", {}), baseline.get(f"fanout_{size}", {})
        ratio = p.get("deliveries_per_s", math.nan) / b.get("deliveries_per_s", math.nan) if b.get(
            "deliveries_per_s") else math.nan
        target = "-"
        if size == 1000:
            target = f"ratio >= 4: {_verdict(None if math.isnan(ratio) else ratio >= 4)}"
        complete = all(r.get("delivered") == r.get("expected") for r in (p, b) if "expected" in r)
        lines.append(
            f"| {size:,} | {_num(p.get('deliveries_per_s'))} | {_ms(p.get('p50_ms'))} | {_ms(p.get('p99_ms'))} "
            f"| {_num(b.get('deliveries_per_s'))} | {_ms(b.get('p50_ms'))} | {_ms(b.get('p99_ms'))} "
            f"| {'-' if math.isnan(ratio) else f'{ratio:.1f}x'} | {target}{'' if complete else ' (incomplete)'} |"
        )
    p, b = project.get("fixed_rate", {}), baseline.get("fixed_rate", {})
    lines += [
        "",
        f"**Fixed rate**: {config.rate_subscribers:,} subscribers, {config.rate:g} messages/s for "
        f"{config.rate_seconds:g} s (a delivery not made {config.drain_seconds:g} s after the last send counts as lost).",
        "",
        "| server | delivered | p50 ms | p99 ms | max ms | target p99 < 250 ms |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, r in (("project", p), ("baseline", b)):
        if not r:
            continue
        ok = None if name != "project" or "p99_ms" not in r else r["p99_ms"] < 250
        lines.append(
            f"| {name} | {r.get('delivered_fraction', math.nan) * 100:.1f}% | {_ms(r.get('p50_ms'))} "
            f"| {_ms(r.get('p99_ms'))} | {_ms(r.get('max_ms'))} | {_verdict(ok) if name == 'project' else '-'} |"
        )
    p, b = project.get("memory", {}), baseline.get("memory", {})
    ok = None
    if "kib_per_subscription" in p and "kib_per_subscription" in b:
        ok = p["kib_per_subscription"] <= b["kib_per_subscription"]
    lines += [
        "",
        f"**Memory per idle subscription**: server RSS growth from {config.memory_low:,} to "
        f"{config.memory_high:,} open subscriptions (VmRSS; the project's embedded database is a separate process).",
        "",
        f"| server | RSS at {config.memory_low:,} | RSS at {config.memory_high:,} | per subscription | target |",
        "|---|---:|---:|---:|---|",
    ]
    for name, r in (("project", p), ("baseline", b)):
        if "kib_per_subscription" in r:
            lines.append(
                f"| {name} | {r['rss_low_kib'] / 1024:.1f} MiB | {r['rss_high_kib'] / 1024:.1f} MiB "
                f"| {r['kib_per_subscription']:.1f} KiB | {('<= baseline: ' + _verdict(ok)) if name == 'project' else '-'} |"
            )
    if project:
        lines += [
            "",
            f"**Writes**: {config.senders} concurrent senders, back to back for {config.send_seconds:g} s "
            "(no subscribers).",
            "",
            "| operation | per second | p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, label in (
            ("send_one_stream", "sendChatMessage, all senders in one stream"),
            ("send_many_streams", f"sendChatMessage, {config.senders} streams"),
            ("raw_insert", "raw pymongo insert_one, same database (ceiling)"),
        ):
            r = project.get(key, {})
            if "per_s" in r:
                lines.append(f"| {label} | {_num(r['per_s'])} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {r['errors']} |")
        h = project.get("history", {})
        if h and "error" not in h:
            sizes = sorted(int(s) for s in h)
            small, large = h[str(sizes[0])], h[str(sizes[-1])]
            ratio = large["p50_ms"] / small["p50_ms"]
            lines += [
                "",
                "**History**: `chatMessages(last: 50, before: ...)` in the middle, quarters and oldest end "
                "of a stream, one query at a time.",
                "",
                "| stream size | p50 ms | p99 ms | target |",
                "|---:|---:|---:|---|",
            ]
            for size in sizes:
                r = h[str(size)]
                target = "-"
                if size == sizes[-1] and len(sizes) > 1:
                    target = f"p50 {ratio:.2f}x of {sizes[0]:,}, <= 1.5x: {_verdict(ratio <= 1.5)}"
                lines.append(f"| {size:,} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {target} |")
    failures = [f"{t}.{k}: {v['error']}" for t, rs in results.items() for k, v in rs.items()
                if isinstance(v, dict) and "error" in v]
    if failures:
        lines += ["", "Failed phases:"] + [f"- {f}" for f in failures]
    for name, rs in results.items():
        if rs.get("reopened_subscriptions"):
            lines += ["", f"{name}: {rs['reopened_subscriptions']} subscriptions were ended by the server "
                      "before they were live and were opened again."]
        if rs.get("unexpected_frames"):
            lines += ["", f"Unexpected frames from {name} (first ones):"]
            lines += [f"- `{frame}`" for frame in rs["unexpected_frames"][:5]]
    lines += ["", "CPU use during each measurement (cores; server / its database / load generator):", ""]
    for name, rs in results.items():
        for key, r in rs.items():
            if isinstance(r, dict) and "cpu_cores" in r:
                c = r["cpu_cores"]
                per = r.get("server_cpu_us_per_delivery")
                extra = f", {per:.0f} µs server CPU per delivery" if per and not math.isnan(per) else ""
                lines.append(f"- {name} {key}: {c['server']} / {c['db'] if c['db'] else '-'} / {c['generator']}{extra}")
    return "\n".join(lines)


async def main_async(config: Config, args: argparse.Namespace) -> int:
    raise_nofile()
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="gql-api-bench-"))
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        for name in config.targets:
            gc.collect()
            results[name] = await bench_target(name, config, workdir)
    finally:
        keep = any("error" in r for rs in results.values() for r in rs.values() if isinstance(r, dict))
        if keep:
            log(f"server logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info["seconds"] = round(time.perf_counter() - started, 1)
    table = report(config, info, results)
    print(table)
    print(f"\n(whole run: {info['seconds']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "config": config.__dict__, "results": results},
                                              indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(config, args))
    return uvloop.run(main_async(config, args))


if __name__ == "__main__":
    sys.exit(main())
