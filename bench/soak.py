"""The soak test (issue 5): many clients subscribing and sending, on two API replicas, one database.

    python -m bench.soak                              # 200 clients for 60 s (about 2 minutes)
    python -m bench.soak --clients 20 --seconds 10    # a quick run

Not part of CI. Everything runs on loopback and stops by itself; it exits non-zero when a check
fails. What it does:

- starts two ``gql-api serve`` processes (replicas A and B) on free loopback ports, sharing one
  fresh temporary ``GQL_API_DATA_DIR``: A starts the embedded database, B reuses it;
- seeds one user per client and an owner (as bench/run.py does), and the owner creates the streams;
- each client opens one websocket (graphql-transport-ws, answering the server's ``ping``) on
  replica A or B (alternately), first sends a *marker* message over HTTP, then subscribes with
  ``messageAdded(streamId, after: <the marker's cursor>)``, and then sends ``sendChatMessage``
  over HTTP at a modest rate, alternating between the replicas, recording every acknowledged
  message (id, stream, cursor). Clients never send more than ``--per-window`` messages in any
  30 s, so the per-user rate limit (20 per 30 s per stream) is never hit;
- after the sending period it waits (bounded by ``--drain``) until every subscriber has received
  the newest acknowledged message of its stream, then checks:

  1. every acknowledged message is in the history (``chatMessages(last: 100, before: ...)``
     paged back to the start) exactly once, and nothing is stored twice;
  2. every subscriber received every message of its stream after its marker exactly once and in
     order (cursors strictly increasing, no duplicate ids): every acknowledged one, and every one
     in the history;
  3. no 5xx: HTTP status >= 500, and GraphQL errors (over HTTP or the websocket) whose
     ``extensions.statusCode`` >= 500;
  4. each replica's memory (VmRSS) when sending stops is within 10% of its memory after the
     warm-up (the first ``--warmup`` seconds of sending);
  5. no ERROR or traceback in either replica's log.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import math
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from bench.clients import PONG, Http
from bench.processes import ServerProcess, base_env, cpu_seconds, free_port, log, machine, raise_nofile, rss_kib
from bench.scenarios import percentile
from bench.targets import make_tokens, seed
from gql_api.pagination import decode_cursor

SUBSCRIPTION = (
    "subscription Soak($s: ID!, $a: String) { messageAdded(streamId: $s, after: $a) { id streamId cursor content } }"
)
SEND = (
    "mutation Send($s: ID!, $c: String!, $k: String) "
    "{ sendChatMessage(streamId: $s, content: $c, clientMessageId: $k) { id streamId cursor } }"
)
CREATE_STREAM = "mutation Create($t: String!) { createLiveStream(title: $t) { id } }"
HISTORY = (
    "query History($s: ID!, $b: String) { chatMessages(streamId: $s, last: 100, before: $b) { "
    "edges { cursor node { id content clientMessageId } } pageInfo { hasPreviousPage startCursor } } }"
)
CONTENT_PREFIX = "soak "
RATE_WINDOW_SECONDS = 30.0  # the server's default RATE_LIMIT_WINDOW_SECONDS
REQUEST_TIMEOUT = 30.0
MEMORY_TOLERANCE = 0.10


# -- what the run records ---------------------------------------------------------------------


@dataclass
class Acked:
    """An acknowledged message."""

    key: str
    stream: str
    id: str
    cursor: str
    seq: int


@dataclass
class Stats:
    http_5xx: int = 0
    graphql_5xx: int = 0  # over HTTP
    ws_5xx: int = 0  # GraphQL errors and `error` frames over the websocket
    rate_limited: int = 0
    other_errors: int = 0  # 4xx other than 429, transport failures, timeouts
    samples: list[str] = field(default_factory=list)
    acked: dict[str, Acked] = field(default_factory=dict)  # by key
    sent_at: dict[str, float] = field(default_factory=dict)  # by key, perf_counter before the POST
    ack_latencies: list[float] = field(default_factory=list)
    delivery_latencies: list[float] = field(default_factory=list)
    sends: int = 0

    def note(self, text: str) -> None:
        if len(self.samples) < 20:
            self.samples.append(text[:400])

    def classify(self, where: str, status: int, body: Any) -> bool:
        """Count a response's errors; True when it acknowledged the operation."""
        if status >= 500:
            self.http_5xx += 1
        errors = body.get("errors") if isinstance(body, dict) else None
        ok = status == 200 and not errors and isinstance(body, dict) and body.get("data")
        for error in errors or []:
            code = (error.get("extensions") or {}).get("statusCode")
            if isinstance(code, int) and code >= 500:
                self.graphql_5xx += 1
            elif code == 429:
                self.rate_limited += 1
            else:
                self.other_errors += 1
        if not ok:
            if not errors and status < 500:
                self.other_errors += 1
            self.note(f"{where}: HTTP {status} {json.dumps(body)}")
        return bool(ok)


class Replica:
    def __init__(self, name: str, server: ServerProcess, port: int) -> None:
        self.name, self.server, self.port = name, server, port
        self.pid = server.pid  # kept: the server forgets it once stopped

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def http(self, token: str) -> Http:
        return Http("127.0.0.1", self.port, token)


class Client:
    """One simulated viewer: a subscription on one replica, sends over HTTP to both."""

    def __init__(
        self, index: int, token: str, stream: str, replicas: list[Replica], stats: Stats, per_window: int
    ) -> None:
        self.index, self.token, self.stream, self.stats = index, token, stream, stats
        self.replicas = replicas
        self.sub_replica = replicas[index % 2]
        self.http = [r.http(token) for r in replicas]
        self.per_window = per_window
        self.sent_times: collections.deque[float] = collections.deque()
        self.count = 0
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.after_seq: int | None = None  # the marker's sequence number: None = not started
        self.received: list[tuple[str, int]] = []  # (id, seq) in arrival order
        self.last_seq = 0
        self.ended: str | None = None  # why the subscription stopped, if it did
        self.closing = False  # this side is closing the socket: its end is no finding

    # -- sending ---------------------------------------------------------------------------

    async def send(self) -> Acked | None:
        """One sendChatMessage, alternating replicas (the marker goes to the other replica)."""
        now = time.monotonic()
        while self.sent_times and self.sent_times[0] <= now - RATE_WINDOW_SECONDS:
            self.sent_times.popleft()
        if len(self.sent_times) >= self.per_window:  # stay under the per-user rate limit
            await asyncio.sleep(self.sent_times[0] + RATE_WINDOW_SECONDS - now + 0.05)
        self.sent_times.append(time.monotonic())
        replica = (self.index + self.count + 1) % 2
        key = f"c{self.index}-m{self.count}"
        self.count += 1
        http = self.http[replica]
        stats = self.stats
        stats.sends += 1
        stats.sent_at[key] = started = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(
                http.request(SEND, {"s": self.stream, "c": CONTENT_PREFIX + key, "k": key}), REQUEST_TIMEOUT
            )
        except (TimeoutError, OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
            await http.close()  # in an unknown state
            stats.other_errors += 1
            stats.note(f"send {key} via {self.replicas[replica].name}: {exc!r}")
            return None
        if not stats.classify(f"send {key} via {self.replicas[replica].name}", status, body):
            return None
        stats.ack_latencies.append(time.perf_counter() - started)
        data = body["data"]["sendChatMessage"]
        acked = Acked(key, data["streamId"], data["id"], data["cursor"], decode_cursor(data["cursor"]))
        if acked.stream != self.stream:
            stats.note(f"send {key}: acknowledged in stream {acked.stream}, sent to {self.stream}")
        stats.acked[key] = acked
        return acked

    async def run(self, start: float, end: float, interval: float) -> None:
        """Send at about one message per ``interval`` seconds (jittered) until ``end``."""
        due = start + random.uniform(0, interval)
        while due < end:
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            await self.send()
            due = max(due + interval * random.uniform(0.8, 1.2), time.perf_counter())

    # -- the subscription ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, send the marker, subscribe after it."""
        error: Exception | None = None
        for attempt in range(3):
            try:
                self.ws = await ws_connect(
                    self.sub_replica.ws_url,
                    subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                    compression=None,
                    proxy=None,
                    ping_interval=None,
                    open_timeout=30,
                    close_timeout=5,
                    max_queue=None,
                )
                await self.ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": self.token}}))
                ack = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
                if ack.get("type") != "connection_ack":
                    raise RuntimeError(f"no connection_ack: {ack}")
                break
            except (OSError, TimeoutError, ConnectionClosed, RuntimeError) as exc:
                error = exc
                if self.ws is not None:
                    self.ws.transport.abort()
                    self.ws = None
                await asyncio.sleep(0.2 * (attempt + 1))
        else:
            self.ended = f"could not connect: {error!r}"
            return
        marker = await self.send()
        if marker is None:
            self.ended = "the marker message was not acknowledged"
            return
        self.after_seq = self.last_seq = marker.seq
        await self.ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": SUBSCRIPTION, "variables": {"s": self.stream, "a": marker.cursor}},
                }
            )
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        stats, ws = self.stats, self.ws
        try:
            async for text in ws:
                frame = json.loads(text)
                kind = frame.get("type")
                if kind == "next":
                    payload = frame.get("payload") or {}
                    if payload.get("errors"):
                        for error in payload["errors"]:
                            code = (error.get("extensions") or {}).get("statusCode")
                            if isinstance(code, int) and code >= 500:
                                stats.ws_5xx += 1
                        stats.note(f"subscription of client {self.index}: {text}")
                    event = (payload.get("data") or {}).get("messageAdded")
                    if event:
                        seq = decode_cursor(event["cursor"])
                        self.received.append((event["id"], seq))
                        self.last_seq = max(self.last_seq, seq)
                        key = event["content"].removeprefix(CONTENT_PREFIX)
                        sent = stats.sent_at.get(key)
                        if sent is not None:
                            stats.delivery_latencies.append(time.perf_counter() - sent)
                elif kind == "ping":  # graphql-transport-ws keep-alive: answer as clients must
                    await ws.send(PONG)
                elif kind in ("error", "complete"):
                    if kind == "error":
                        for error in frame.get("payload") or []:
                            code = (error.get("extensions") or {}).get("statusCode")
                            if isinstance(code, int) and code >= 500:
                                stats.ws_5xx += 1
                    self.ended = f"{kind}: {text[:300]}"
                    stats.note(f"subscription of client {self.index} ended: {text}")
                    return
        except ConnectionClosed as exc:
            if self.ended is None and not self.closing:
                self.ended = (
                    f"socket closed: {exc.rcvd.code if exc.rcvd else None} {exc.rcvd.reason if exc.rcvd else ''}"
                )
                stats.note(f"client {self.index}: {self.ended}")
            return
        if self.ended is None and not self.closing:
            self.ended = "socket closed"
            stats.note(f"client {self.index}: socket closed by the server")

    async def close(self) -> None:
        self.closing = True
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 10)
            except (TimeoutError, OSError, ConnectionClosed):
                self.ws.transport.abort()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        for http in self.http:
            await http.close()


# -- the run ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak test: clients subscribing and sending on two API replicas sharing one database.",
    )
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (200)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the clients send (60)")
    parser.add_argument("--streams", type=int, default=10, help="streams the clients spread over (10)")
    parser.add_argument("--rate", type=float, default=0.4, help="messages per second per client (0.4)")
    parser.add_argument(
        "--per-window",
        type=int,
        default=15,
        help="most messages a client sends in any 30 s, marker included (15; the server allows 20)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="seconds of sending before the warm-up memory sample (10; at most a third of --seconds)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=30.0,
        help="most seconds to wait for subscribers to catch up after sending stops (30)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data dir and server logs")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.streams < 1 or args.seconds <= 0 or args.rate <= 0:
        parser.error("--clients, --streams, --seconds and --rate must be positive")
    if not 1 <= args.per_window <= 19:
        parser.error("--per-window must be 1 to 19 (the server allows 20 per 30 s)")
    args.warmup = min(args.warmup, args.seconds / 3)
    return args


class Sampler:
    """VmRSS of the replicas, sampled every second while the clients send."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.samples: list[tuple[float, dict[str, int]]] = []

    def take(self) -> dict[str, int]:
        return {r.name: rss_kib(r.server.pid) for r in self.replicas}

    async def run(self, start: float, end: float) -> None:
        while time.perf_counter() < end:
            self.samples.append((time.perf_counter() - start, self.take()))
            await asyncio.sleep(1.0)


async def read_history(replica: Replica, token: str, stream: str, stats: Stats) -> list[dict[str, Any]]:
    """The stream's whole history, oldest first, paged back 100 at a time."""
    http = replica.http(token)
    pages: list[list[dict[str, Any]]] = []
    before: str | None = None
    try:
        for _ in range(10_000):
            status, body = await asyncio.wait_for(http.request(HISTORY, {"s": stream, "b": before}), REQUEST_TIMEOUT)
            if not stats.classify(f"history of {stream}", status, body):
                raise RuntimeError(f"could not read the history of {stream}: HTTP {status} {body}")
            page = body["data"]["chatMessages"]
            pages.append(page["edges"])
            if not page["pageInfo"]["hasPreviousPage"]:
                break
            before = page["pageInfo"]["startCursor"]
    finally:
        await http.close()
    return [edge for page in reversed(pages) for edge in page]


def log_problems(path: Path) -> tuple[int, int, list[str]]:
    """ERROR lines and tracebacks, WARNING lines, and the first few of them, in a server log."""
    errors = warnings = 0
    first: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0, 0, []
    for line in text.splitlines():
        if line.startswith(("ERROR", "Traceback", "CRITICAL")):
            errors += 1
            if len(first) < 5:
                first.append(line[:300])
        elif line.startswith("WARNING"):
            warnings += 1
            if len(first) < 5:
                first.append(line[:300])
    return errors, warnings, first


def _is_embedded_db(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is still the nx-27017 server of this run's data dir."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "nx_27017" in cmdline and str(data_dir.resolve()) in cmdline


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


async def soak(args: argparse.Namespace) -> int:
    raise_nofile()
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="gql-api-soak-"))
    data_dir = workdir / "data"
    secret = secrets.token_urlsafe(48)
    env = {**base_env(), "GQL_API_DATA_DIR": str(data_dir), "MONGODB_DB": "gql_api", "JWT_SECRET": secret}
    replicas: list[Replica] = []
    clients: list[Client] = []
    stats = Stats()
    ok = False
    db_pid: int | None = None
    try:
        # -- two replicas on one embedded database ----------------------------------------
        for name in ("A", "B"):  # A starts the embedded database; B finds it and reuses it
            port = free_port()
            server = ServerProcess(
                name,
                [sys.executable, "-m", "gql_api", "serve", "--port", str(port)],
                env,
                workdir / f"replica-{name}.log",
            )
            await server.start()
            replicas.append(Replica(name, server, port))
            log(f"replica {name} serving on 127.0.0.1:{port} (pid {server.pid})")
        uri = (data_dir / "mongodb.uri").read_text().strip()
        db_pid = int((data_dir / "nx-27017.pid").read_text())
        reused = "Reusing the embedded MongoDB server" in (workdir / "replica-B.log").read_text(errors="replace")
        log(f"embedded database {uri} (pid {db_pid}); replica B reused it: {reused}")

        # -- users, tokens, streams --------------------------------------------------------
        _, user_ids = await seed(uri, "gql_api", [], args.clients + 1)
        tokens = make_tokens(secret, user_ids)
        owner = tokens[-1]  # owns every stream, sends nothing (owners are exempt from the limit)
        http = replicas[0].http(owner)
        streams = []
        for i in range(args.streams):
            status, body = await http.request(CREATE_STREAM, {"t": f"soak {i}"})
            if not stats.classify("createLiveStream", status, body):
                raise RuntimeError(f"could not create a stream: {body}")
            streams.append(body["data"]["createLiveStream"]["id"])
        await http.close()
        log(f"{len(user_ids)} users, {len(streams)} streams")

        # -- clients: each subscribes (via A or B) after a marker message --------------------
        clients = [
            Client(i, tokens[i], streams[(i // 2) % len(streams)], replicas, stats, args.per_window)
            for i in range(args.clients)
        ]
        started = time.perf_counter()
        for i in range(0, len(clients), 50):
            await asyncio.gather(*(c.open() for c in clients[i : i + 50]))
        subscribed = [c for c in clients if c.after_seq is not None]
        log(f"{len(subscribed)} of {len(clients)} clients subscribed ({time.perf_counter() - started:.1f}s)")

        # -- the soak ----------------------------------------------------------------------
        interval = 1.0 / args.rate
        pids = {"A": replicas[0].server.pid, "B": replicas[1].server.pid, "db": db_pid}
        cpu_before = {k: cpu_seconds(p) for k, p in pids.items()} | {"generator": cpu_seconds(None)}
        load_before = os.getloadavg()
        start = time.perf_counter()
        end = start + args.seconds
        sampler = Sampler(replicas)
        sampling = asyncio.create_task(sampler.run(start, end))
        log(f"sending for {args.seconds:g} s: {args.clients} clients, ~{args.rate:g} messages/s each")

        async def warm_sample() -> dict[str, int]:
            await asyncio.sleep(max(0.0, start + args.warmup - time.perf_counter()))
            return sampler.take()

        warm_task = asyncio.create_task(warm_sample())
        await asyncio.gather(*(c.run(start, end, interval) for c in subscribed))
        send_seconds = time.perf_counter() - start
        rss_warm = await warm_task
        rss_end = sampler.take()  # every send has been answered
        await sampling
        cpu_after = {k: cpu_seconds(p) for k, p in pids.items()} | {"generator": cpu_seconds(None)}
        cores = {k: (cpu_after[k] - cpu_before[k]) / send_seconds for k in cpu_before}
        load_after = os.getloadavg()
        log(f"sending done in {send_seconds:.1f}s: {len(stats.acked)} acknowledged of {stats.sends} sent")

        # -- drain -------------------------------------------------------------------------
        newest: dict[str, int] = collections.defaultdict(int)
        for acked in stats.acked.values():
            newest[acked.stream] = max(newest[acked.stream], acked.seq)
        drain_started = time.perf_counter()
        while time.perf_counter() - drain_started < args.drain:
            behind = [c for c in subscribed if c.ended is None and c.last_seq < newest[c.stream]]
            if not behind:
                break
            await asyncio.sleep(0.2)
        drain_seconds = time.perf_counter() - drain_started
        behind = [c for c in subscribed if c.last_seq < newest[c.stream]]
        log(f"drained in {drain_seconds:.1f}s; {len(behind)} subscribers behind")
        rss_drained = {r.name: rss_kib(r.server.pid) for r in replicas}

        # -- history -----------------------------------------------------------------------
        histories = {}
        for i, stream in enumerate(streams):
            histories[stream] = await read_history(replicas[i % 2], owner, stream, stats)

        # -- checks ------------------------------------------------------------------------
        # 1. every acknowledged message in the history exactly once
        history_ids: collections.Counter[str] = collections.Counter()
        history_keys: collections.Counter[tuple[str, str]] = collections.Counter()
        history_seq: dict[str, list[int]] = {}
        history_problems = []
        for stream, edges in histories.items():
            seqs = [decode_cursor(e["cursor"]) for e in edges]
            history_seq[stream] = seqs
            if any(b <= a for a, b in itertools.pairwise(seqs)):
                history_problems.append(f"history of {stream} is not in cursor order")
            for edge in edges:
                history_ids[edge["node"]["id"]] += 1
                if edge["node"]["clientMessageId"]:
                    history_keys[(stream, edge["node"]["clientMessageId"])] += 1
        acked_missing = [a for a in stats.acked.values() if history_ids[a.id] == 0]
        acked_twice = [a for a in stats.acked.values() if history_ids[a.id] > 1 or history_keys[(a.stream, a.key)] > 1]
        id_dupes = sum(n - 1 for n in history_ids.values() if n > 1)
        key_dupes = sum(n - 1 for n in history_keys.values() if n > 1)
        stored = sum(len(e) for e in histories.values())
        acked_ids = {a.id for a in stats.acked.values()}
        unacked_stored = sum(
            1
            for e in histories.values()
            for edge in e
            if edge["node"]["id"] not in acked_ids and (edge["node"]["content"] or "").startswith(CONTENT_PREFIX)
        )
        history_problems += [
            f"acknowledged {a.key} (id {a.id}, stream {a.stream}, seq {a.seq}) not in history"
            for a in acked_missing[:3]
        ]
        history_problems += [
            f"acknowledged {a.key} (id {a.id}) stored {history_ids[a.id]}x, key {history_keys[(a.stream, a.key)]}x"
            for a in acked_twice[:3]
        ]
        history_ok = (
            not acked_missing
            and not acked_twice
            and not id_dupes
            and not key_dupes
            and not any("order" in p for p in history_problems)
        )

        # 2. every subscriber got every message of its stream after its marker, once, in order
        acked_by_stream: dict[str, list[Acked]] = collections.defaultdict(list)
        for a in stats.acked.values():
            acked_by_stream[a.stream].append(a)
        history_by_stream = {
            s: [(e["node"]["id"], decode_cursor(e["cursor"])) for e in edges] for s, edges in histories.items()
        }
        expected_total = delivered_total = missing_total = dup_total = order_total = extra_total = 0
        hist_missing_total = incomplete = 0
        bad_clients: list[str] = []
        for c in clients:
            if c.after_seq is None:
                bad_clients.append(f"client {c.index}: never subscribed ({c.ended})")
                continue
            expected = {a.id for a in acked_by_stream[c.stream] if a.seq > c.after_seq}
            in_history = {i for i, seq in history_by_stream[c.stream] if seq > c.after_seq}
            ids = [i for i, _ in c.received]
            got = collections.Counter(ids)
            seqs = [s for _, s in c.received]
            missing = len(expected - got.keys())
            dups = sum(n - 1 for n in got.values() if n > 1)
            disorder = sum(1 for a, b in itertools.pairwise(seqs) if b <= a) + sum(1 for s in seqs if s <= c.after_seq)
            extra = len(got.keys() - in_history)  # received, but not stored after the marker
            hist_missing = len(in_history - got.keys())
            expected_total += len(expected)
            delivered_total += len(ids)
            missing_total += missing
            dup_total += dups
            order_total += disorder
            extra_total += extra
            hist_missing_total += hist_missing
            if missing or dups or disorder or extra or hist_missing:
                incomplete += 1
                bad_clients.append(
                    f"client {c.index} (stream {c.stream}, via {c.sub_replica.name}, after seq {c.after_seq}, "
                    f"last seq {c.last_seq}): {missing} acknowledged missing, {hist_missing} stored missing, "
                    f"{dups} duplicates, {disorder} out of order, {extra} unknown; ended: {c.ended}"
                )
        ended_early = [c for c in subscribed if c.ended is not None]
        delivery_ok = not bad_clients and not ended_early

        # 3. no 5xx
        five_xx = stats.http_5xx + stats.graphql_5xx + stats.ws_5xx
        # 4. memory
        memory_ok = {name: rss_end[name] <= rss_warm[name] * (1 + MEMORY_TOLERANCE) for name in rss_warm}
        # 5. the logs (read after the replicas stop, below)

        # -- shut down, then read the logs ---------------------------------------------------
        for c in clients:
            await c.close()
        for replica in reversed(replicas):  # B first: A owns the database
            replica.server.stop()
        logs = {r.name: log_problems(workdir / f"replica-{r.name}.log") for r in replicas}
        logs_ok = all(errors == 0 for errors, _, _ in logs.values())

        # -- the report ----------------------------------------------------------------------
        checks = {
            "history": history_ok,
            "delivery": delivery_ok,
            "5xx": five_xx == 0,
            "memory": all(memory_ok.values()),
            "logs": logs_ok,
            "sends": stats.other_errors == 0 and stats.rate_limited == 0 and len(subscribed) == len(clients),
        }

        def verdict(good: bool) -> str:
            return "PASS" if good else "FAIL"

        acks = sorted(stats.ack_latencies)
        deliveries = sorted(stats.delivery_latencies)
        lines = [
            (
                f"Soak {info['date']} on {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}: "
                f"{args.clients} clients on {len(streams)} streams for {args.seconds:g} s, ~{args.rate:g} messages/s "
                f"each (at most {args.per_window} per 30 s), replicas A and B (pids {replicas[0].pid}, "
                f"{replicas[1].pid}) on one embedded database (pid {db_pid})."
            ),
            (
                f"Load average before sending {', '.join(f'{x:.2f}' for x in load_before)}; after "
                f"{', '.join(f'{x:.2f}' for x in load_after)}. CPU while sending (cores): A {cores['A']:.2f}, "
                f"B {cores['B']:.2f}, database {cores['db']:.2f}, this generator {cores['generator']:.2f}."
            ),
            "",
            "| check | figures | result |",
            "|---|---|---|",
            (
                f"| acknowledged messages in the history exactly once | {len(stats.acked):,} acknowledged "
                f"({stats.sends:,} sent); {len(stats.acked) - len(acked_missing) - len(acked_twice):,} found once, "
                f"{len(acked_missing)} missing, {len(acked_twice)} more than once; {stored:,} stored in all, "
                f"{id_dupes + key_dupes} duplicates, {unacked_stored} stored but not acknowledged "
                f"| {verdict(history_ok)} |"
            ),
            (
                f"| subscribers got every message of their stream after their marker once, in order "
                f"| {len(subscribed) - incomplete}/{len(clients)} subscribers complete; "
                f"{expected_total:,} acknowledged deliveries expected, {delivered_total:,} received; "
                f"{missing_total} missing ({hist_missing_total} of stored), {dup_total} duplicates, "
                f"{order_total} out of order, {extra_total} unknown; "
                f"{len(ended_early)} subscriptions ended early; drain {drain_seconds:.1f} s | {verdict(delivery_ok)} |"
            ),
            (
                f"| zero 5xx | HTTP status >= 500: {stats.http_5xx}; GraphQL statusCode >= 500: "
                f"{stats.graphql_5xx} over HTTP, {stats.ws_5xx} over websockets | {verdict(five_xx == 0)} |"
            ),
        ]
        for r in replicas:
            warm, final, drained = rss_warm[r.name], rss_end[r.name], rss_drained[r.name]
            lines.append(
                f"| memory of replica {r.name} (VmRSS) within {MEMORY_TOLERANCE:.0%} of warm-up | after "
                f"{args.warmup:.0f} s {mib(warm)}; at the end ({send_seconds:.0f} s) {mib(final)} "
                f"({(final / warm - 1) * 100:+.1f}%); after the drain {mib(drained)} | {verdict(memory_ok[r.name])} |"
            )
        for name, (errors, warnings, _) in logs.items():
            lines.append(
                f"| replica {name} log: no ERROR or traceback | {errors} error lines, {warnings} warnings "
                f"| {verdict(errors == 0)} |"
            )
        lines.append(
            f"| every client subscribed, every send answered | {len(subscribed)}/{len(clients)} subscribed; "
            f"{stats.rate_limited} rate-limited, {stats.other_errors} other failures | {verdict(checks['sends'])} |"
        )
        lines += [
            "",
            (
                f"sendChatMessage acknowledged: p50 {ms(percentile(acks, 50))}, p99 {ms(percentile(acks, 99))}, "
                f"max {ms(acks[-1] if acks else float('nan'))}; {len(stats.acked) / send_seconds:.1f} messages/s."
            ),
            (
                f"Delivery (send issued -> event read): {len(deliveries):,} events, "
                f"p50 {ms(percentile(deliveries, 50))}, "
                f"p99 {ms(percentile(deliveries, 99))}, max {ms(deliveries[-1] if deliveries else float('nan'))}."
            ),
        ]
        trend = [
            f"{t:.0f}s A {mib(s['A'])} B {mib(s['B'])}"
            for t, s in sampler.samples[:: max(1, len(sampler.samples) // 6)]
        ]
        lines.append("Memory while sending: " + "; ".join(trend) + ".")
        problems = history_problems + bad_clients[:10] + [f"client {c.index}: {c.ended}" for c in ended_early[:5]]
        problems += stats.samples[:10]
        for name, (_, _, first) in logs.items():
            problems += [f"replica {name} log: {line}" for line in first]
        if problems:
            lines += ["", "Details (first ones):"] + [f"- {p}" for p in problems]
        ok = all(checks.values())
        lines += [
            "",
            f"RESULT: {'PASS' if ok else 'FAIL'}"
            + ("" if ok else " (" + ", ".join(k for k, v in checks.items() if not v) + ")"),
        ]
        print("\n".join(lines), flush=True)
    finally:
        for c in clients:
            try:
                await c.close()
            except Exception as exc:  # noqa: BLE001 - the servers must be stopped whatever happens
                log(f"closing client {c.index} failed: {exc!r}")
        for replica in reversed(replicas):
            replica.server.stop()
        if db_pid is not None and _is_embedded_db(db_pid, data_dir):
            # Started (through replica A) by this run: never leave it behind.
            os.kill(db_pid, signal.SIGTERM)
            log(f"stopped the embedded database (pid {db_pid}) that outlived replica A")
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"data dir and server logs kept in {workdir}")
    return 0 if ok else 1


async def soak_or_error(args: argparse.Namespace) -> int:
    try:
        return await soak(args)
    except Exception as exc:  # noqa: BLE001 - the run could not finish: say why, exit 2
        traceback.print_exc()
        log(f"the soak could not run: {exc!r}")
        return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(soak_or_error(args))
    return uvloop.run(soak_or_error(args))


if __name__ == "__main__":
    sys.exit(main())
