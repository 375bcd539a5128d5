"""The benchmark's configuration: what to measure and at which sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Config:
    """One benchmark pass: sizes, rates and durations, the targets, and the websocket compression."""

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
    compression: bool  # subscribers offer permessage-deflate (as browsers do)
    ws_compression: bool = False  # the project accepts it (WS_COMPRESSION; off by default)
    workers: int = 1  # the project runs as `gql-api serve --workers N`
    writes_and_history: bool = True  # run the project-only phases (compression does not change them)
    writes_only: bool = False  # run the write phases only (``--only writes``)
    users: int = 500  # senders and viewers take turns among this many users
    profile_dir: Path | None = None
    profile_format: str = "flamegraph"
    profile_native: bool = False
    connect_batch: int = 100
    settle_seconds: float = 2.0
    warmup_subscribers: int = 200


FULL = dict(
    sizes=[100, 1000, 5000],
    messages=[100, 100, 20],
    window=4,
    rate_subscribers=1000,
    rate=20.0,
    rate_seconds=10.0,
    drain_seconds=5.0,
    memory_low=1000,
    memory_high=5000,
    senders=50,
    send_seconds=5.0,
    history=[1000, 50_000],
    history_queries=60,
)
QUICK = dict(
    sizes=[50, 200, 600],
    messages=[30, 15, 8],
    window=4,
    rate_subscribers=200,
    rate=20.0,
    rate_seconds=3.0,
    drain_seconds=3.0,
    memory_low=200,
    memory_high=600,
    senders=50,
    send_seconds=2.0,
    history=[1000, 5000],
    history_queries=20,
)
