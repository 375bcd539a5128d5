"""The benchmark's report: one Markdown table per measurement, with the targets' verdicts."""

from __future__ import annotations

import math
from typing import Any

from bench.config import Config


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


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    if not a.get("deliveries_per_s") or not b.get("deliveries_per_s"):
        return math.nan
    return a["deliveries_per_s"] / b["deliveries_per_s"]


def compression_label(compression: bool) -> str:
    """How the report names a compression mode."""
    return "permessage-deflate" if compression else "off"


def header(info: dict[str, Any]) -> str:
    """The report's first line: the machine, and what it was busy with."""
    return (
        f"Benchmark {info['date']} on {info['cpus']} CPUs ({info['cpu']}), {info['memory_gib']} GiB, "
        f"{info['system']}, Python {info['python']}"
        + (f", Node.js {info['node']}" if info.get("node") else "")
        + "; load average at start "
        + ", ".join(f"{x:.2f}" for x in info["loadavg_at_start"])
        + "."
    )


def report(info: dict[str, Any], runs: list[tuple[Config, dict[str, dict[str, Any]]]]) -> str:
    """The whole report: the header, then every pass's tables (one pass per compression mode)."""
    lines = [header(info)]
    for target, reason in info.get("skipped", {}).items():
        lines.append(f"Not run: {target} ({reason}).")
    workers = runs[0][0].workers if runs else 1
    if workers > 1:
        lines.append(f"The project ran as `gql-api serve --workers {workers}` (its CPU and memory: all its processes).")
    for config, results in runs:
        if len(runs) > 1:
            lines += ["", f"### Websocket compression: {compression_label(config.compression)}"]
        else:
            lines.append(f"Websocket compression: {compression_label(config.compression)}.")
        if config.compression:
            accepted = "on: it accepts it" if config.ws_compression else "off, its default: it declines it"
            lines.append(f"The project's WS_COMPRESSION: {accepted}.")
        lines += ["", sections(config, results)]
    return "\n".join(lines)


def sections(config: Config, results: dict[str, dict[str, Any]]) -> str:
    """The tables of one pass."""
    project, baseline, node = results.get("project", {}), results.get("baseline", {}), results.get("node")
    peers = [("project", project), ("baseline", baseline)] + ([("node", node)] if node is not None else [])
    lines = [
        f"**Fan-out**: one stream, N subscribers (one per websocket), {config.window} messages in flight; "
        "latency = sendChatMessage issued -> event received.",
        "",
        "| subscribers | project deliveries/s | p50 ms | p99 ms | baseline deliveries/s | p50 ms | p99 ms "
        + ("| node deliveries/s | p50 ms | p99 ms " if node is not None else "")
        + "| ratio "
        + ("| ratio to node " if node is not None else "")
        + "| target |",
        "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|---:|" if node is not None else "") + "---:|---|",
    ]
    for size in sorted(config.sizes):
        runs = [r.get(f"fanout_{size}", {}) for _, r in peers]
        p, b = runs[0], runs[1]
        ratio = _ratio(p, b)
        target = "-"
        if size == 1000:
            target = f"ratio >= 4: {_verdict(None if math.isnan(ratio) else ratio >= 4)}"
        complete = all(r.get("delivered") == r.get("expected") for r in runs if "expected" in r)
        cells = [f"{size:,}"]
        for r in runs:
            cells += [_num(r.get("deliveries_per_s")), _ms(r.get("p50_ms")), _ms(r.get("p99_ms"))]
        cells.append("-" if math.isnan(ratio) else f"{ratio:.1f}x")
        if node is not None:
            to_node = _ratio(p, runs[2])
            cells.append("-" if math.isnan(to_node) else f"{to_node:.1f}x")
        cells.append(f"{target}{'' if complete else ' (incomplete)'}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"**Fixed rate**: {config.rate_subscribers:,} subscribers, {config.rate:g} messages/s for "
        f"{config.rate_seconds:g} s (a delivery not made {config.drain_seconds:g} s after the last send "
        "counts as lost).",
        "",
        "| server | delivered | p50 ms | p99 ms | max ms | target p99 < 250 ms |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, rs in peers:
        r = rs.get("fixed_rate", {})
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
    for name, rs in peers:
        r = rs.get("memory", {})
        if "kib_per_subscription" in r:
            lines.append(
                f"| {name} | {r['rss_low_kib'] / 1024:.1f} MiB | {r['rss_high_kib'] / 1024:.1f} MiB "
                f"| {r['kib_per_subscription']:.1f} KiB "
                f"| {('<= baseline: ' + _verdict(ok)) if name == 'project' else '-'} |"
            )
    if any(key in project for key in ("send_one_stream", "send_many_streams", "raw_insert", "history")):
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
                lines.append(
                    f"| {label} | {_num(r['per_s'])} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {r['errors']} |"
                )
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
    failures = [
        f"{t}.{k}: {v['error']}"
        for t, rs in results.items()
        for k, v in rs.items()
        if isinstance(v, dict) and "error" in v
    ]
    if failures:
        lines += ["", "Failed phases:"] + [f"- {f}" for f in failures]
    for name, rs in results.items():
        if rs.get("reopened_subscriptions"):
            lines += [
                "",
                f"{name}: {rs['reopened_subscriptions']} subscriptions were ended by the server "
                "before they were live and were opened again.",
            ]
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
