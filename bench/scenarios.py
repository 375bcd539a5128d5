"""The measurements (fan-out, fixed rate, idle memory, writes, history) and the run of one target."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bson import ObjectId

from bench.clients import CONTENT_PREFIX, CREATE_STREAM, HISTORY, ME, SEND, Http, Load, Message
from bench.config import Config
from bench.processes import Profiler, cpu_seconds, log, rss_kib
from bench.targets import STARTERS, Target, message_document, user_profile


def percentile(ordered: list[float], p: float) -> float:
    """The nearest-rank percentile ``p`` (0-100) of sorted values; NaN when there are none."""
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
        await load.sender.data(SEND, {"s": load.target.stream_id, "c": CONTENT_PREFIX + key}, load.target.next_token())
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
            await http.data(SEND, {"s": load.target.stream_id, "c": CONTENT_PREFIX + key}, load.target.next_token())
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


async def run_timed(
    workers: int, seconds: float, work: Callable[[int], Awaitable[None]]
) -> tuple[list[float], int, float]:
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
            SEND,
            {"s": streams[worker % len(streams)], "c": f"throughput {next(counter)}"},
            target.next_token(),
        )

    await asyncio.gather(*(send(w) for w in range(config.senders)))  # connect and warm up
    # Every user the senders take turns as has been seen once, as on a server that has been
    # running: a first request of a user reads them from the database, later ones do not.
    for first in range(0, len(target.tokens), config.senders):
        turn = target.tokens[first : first + config.senders]
        await asyncio.gather(*(clients[w].data(ME, {}, token) for w, token in enumerate(turn)))
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
    sender = user_profile(str(ObjectId()), "raw", "Raw", "Inserter")

    async def insert(worker: int) -> None:
        seq = next(seqs)
        await collection.insert_one(message_document(stream_id, seq, sender, f"raw {seq}"))

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
    """Start one target, run every phase against it, stop it; the results by phase."""
    results: dict[str, Any] = {}
    starter = STARTERS[name]
    log(f"== {name}: starting")
    try:
        target, stop = await starter(config, workdir)
    except Exception as exc:  # noqa: BLE001 - reported; the other target still runs
        log(f"== {name}: could not start: {exc}")
        return {"start": {"error": repr(exc)}}
    load = Load(target, config)
    profiler = None
    if config.profile_dir is not None:
        label = f"{name}-{'deflate' if config.compression else 'plain'}"
        profiler = Profiler(config, label, {"server": target.server.pid, "db": target.db_pid})

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

        if not config.writes_only:
            await phase(results, "warmup", lambda: with_reset(warm_up))
            await phase(results, "memory", lambda: with_reset(lambda: memory(load)))
            rate_done = config.rate_subscribers <= 0 or config.rate <= 0
            for size, n_messages in sorted(zip(config.sizes, config.messages, strict=True), reverse=True):

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
        if name == "project" and config.writes_and_history:

            async def many_streams() -> dict[str, Any]:
                http = target.http(2)
                streams = [
                    (await http.data(CREATE_STREAM, {"t": f"bench {i}"}))["createLiveStream"]["id"]
                    for i in range(config.senders)
                ]
                await http.close()
                return await send_throughput(target, config, streams)

            await phase(results, "send_one_stream", lambda: send_throughput(target, config, [target.stream_id]))
            await phase(results, "send_many_streams", many_streams)
            await phase(results, "raw_insert", lambda: raw_inserts(target, config))
            if target.history_streams and not config.writes_only:
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
