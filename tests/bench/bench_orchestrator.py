"""Measure running orchestrator processes: throughput over a backlog or a burst, latency at a rate.

All observe only Redis: the signals go into `signals`; a signal counts as decided when
its `OrderDecided` event arrives on `order-decisions` (published after the decision is
committed) and, for throughput, when the orchestrator group has acknowledged every entry.

Throughput is measured two ways:
- drain (`orchestrator_per_s`, the one `ratio` uses): the orchestrator processes are
  stopped (SIGSTOP) while the signals are published, then let go (SIGCONT); the clock
  runs from then until every entry is acknowledged. That is how the raw loop is measured
  (a backlog, drained with nothing else running), so the two figures compare like for like;
- live (`orchestrator_live_per_s`): the signals are published while the orchestrator
  consumes and a watcher reads the decisions, all on the same cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from shared.streams import GROUP_ORCHESTRATOR, StreamNames
from tests.bench.load import (
    CpuWindow,
    backend_pids,
    entry_signal_id,
    percentiles,
    prebuild,
    progress,
    publish_at_rate,
    publish_burst,
    signal_entry,
)


async def _last_id(redis: Redis, stream: str) -> str:
    last: Any = await redis.xrevrange(stream, "+", "-", count=1)
    return str(last[0][0]) if last else "0-0"


async def watch_decisions(
    redis: Redis, stream: str, after: str, expected: Collection[str], timeout: float
) -> dict[str, tuple[float, str]]:
    """Read OrderDecided events after `after` until every expected signal has one, or timeout.

    Returns {signal_id: (wall time the event was read, status)}.
    """
    want = set(expected)
    seen: dict[str, tuple[float, str]] = {}
    deadline = time.monotonic() + timeout
    cursor = after
    while want - seen.keys() and time.monotonic() < deadline:
        response: Any = await redis.xread({stream: cursor}, count=1000, block=500)
        at = time.time()
        for _, entries in response or []:
            for entry_id, fields in entries:
                cursor = entry_id
                event = json.loads(fields["event"])
                if event["signal_id"] in want:
                    seen[event["signal_id"]] = (at, event["status"])
    return seen


async def group_done(redis: Redis, stream: str, group: str) -> bool:
    """Tell whether the group has read and acknowledged every entry of the stream."""
    groups: Any = await redis.xinfo_groups(stream)
    info = next((g for g in groups if g["name"] == group), None)
    if info is None or int(info["pending"]) != 0:
        return False
    return str(info["last-delivered-id"]) == await _last_id(redis, stream)


async def throughput(
    redis: Redis,
    names: StreamNames,
    events: int,
    *,
    orchestrator_pid: int | None = None,
    database: str | None = None,
    timeout: float = 300,
) -> dict[str, Any]:
    """Publish `events` signals as fast as possible; time until every one is decided and acknowledged.

    With the orchestrator's pid and database name, also the CPU each signal cost the
    orchestrator process and its PostgreSQL backends (robust to other load on the machine).
    """
    entries = [signal_entry(i, "tp") for i in range(events)]
    backends = backend_pids(database) if database else []
    client = [orchestrator_pid] if orchestrator_pid else []
    window = CpuWindow(client=client, postgres=backends).start()
    ids = [entry_signal_id(e) for e in entries]
    after = await _last_id(redis, names.order_decisions)
    watcher = asyncio.create_task(watch_decisions(redis, names.order_decisions, after, ids, timeout))
    started = time.time()
    await publish_burst(redis, names.signals, entries)
    published_s = time.time() - started
    seen = await watcher
    deadline = time.monotonic() + 30
    while not await group_done(redis, names.signals, GROUP_ORCHESTRATOR):
        if time.monotonic() > deadline:
            raise RuntimeError(
                "the orchestrator group still has entries pending 30 s after the last decision"
            )
        await asyncio.sleep(0.005)
    finished = time.time()
    window.stop()
    cpu = window.per(events)
    if len(seen) != events:
        raise RuntimeError(f"only {len(seen)} of {events} signals were decided within {timeout:.0f} s")
    statuses: dict[str, int] = {}
    for _, status in seen.values():
        statuses[status] = statuses.get(status, 0) + 1
    elapsed = finished - started
    progress(f"orchestrator decided {events} signals in {elapsed:.2f} s ({events / elapsed:.0f}/s)")
    return {
        "per_s": round(events / elapsed),
        "events": events,
        "elapsed_s": round(elapsed, 3),
        "publish_s": round(published_s, 3),
        "statuses": statuses,
        "cpu_us_per_signal": {k: round(v, 1) for k, v in cpu.items()} if client else None,
    }


async def drain(
    redis: Redis,
    names: StreamNames,
    events: int,
    *,
    pids: Sequence[int],
    database: str | None = None,
    timeout: float = 300,
) -> dict[str, Any]:
    """Publish `events` signals while the orchestrator processes `pids` are stopped; let them go and
    time until every entry is acknowledged.

    The clock stops at the time in the id of the last `OrderDecided` entry: the consumer publishes
    a batch's decisions in the same script as it acknowledges the batch, so that is when the last
    entry was acknowledged (Redis' clock, this machine's). Meanwhile this process only checks
    every 50 ms whether the group is done, taking next to no CPU from the run: the raw loop,
    which times itself, has nobody polling it either.

    CPU per signal: the orchestrator processes and the database's PostgreSQL backends.
    """
    entries = [signal_entry(i, f"drain{int(time.time())}") for i in range(events)]
    ids = [entry_signal_id(e) for e in entries]
    after = await _last_id(redis, names.order_decisions)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        await publish_burst(redis, names.signals, entries)
        backends = backend_pids(database) if database else []
        window = CpuWindow(client=pids, postgres=backends).start()
        started = time.time()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while not await group_done(redis, names.signals, GROUP_ORCHESTRATOR):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the orchestrator did not drain {events} signals within {timeout:.0f} s")
        await asyncio.sleep(0.05)
    last_decided = await _last_id(redis, names.order_decisions)
    elapsed = int(last_decided.split("-")[0]) / 1000 - started
    window.stop()
    cpu = window.per(events)
    # Every decision is on the stream by now (published with the acks): read, not waited for.
    seen = await watch_decisions(redis, names.order_decisions, after, ids, timeout=30)
    if len(seen) != events:
        raise RuntimeError(f"only {len(seen)} of {events} drained signals have an OrderDecided event")
    statuses: dict[str, int] = {}
    for _, status in seen.values():
        statuses[status] = statuses.get(status, 0) + 1
    progress(f"orchestrator drained {events} signals in {elapsed:.2f} s ({events / elapsed:.0f}/s)")
    return {
        "per_s": round(events / elapsed),
        "events": events,
        "elapsed_s": round(elapsed, 3),
        "statuses": statuses,
        "cpu_us_per_signal": {k: round(v, 1) for k, v in cpu.items()},
    }


def added_by(entry_id: str) -> float:
    """The latest wall time (epoch seconds) at which a stream entry can have been added.

    An entry id's first part is the Redis server's clock, in whole milliseconds, when the entry
    was added: the entry was added before the next millisecond began.
    """
    return (int(entry_id.split("-", 1)[0]) + 1) / 1000


def decision_spans(
    published: Mapping[str, float], decided: Mapping[str, tuple[float, str]]
) -> list[tuple[float, float, float]]:
    """Per signal published and decided: (sent, decision committed by, event read), wall times.

    `published`: {signal_id: wall time just before its XADD}; `decided`: {signal_id: (wall time
    the bench read its OrderDecided, that entry's id)}. The orchestrator publishes OrderDecided
    after the decision's COMMIT has returned, so the entry's time (added_by) bounds the commit's
    from above; reading the event adds the subscriber's own wake-up on top.
    """
    return [
        (sent, added_by(decided[signal_id][1]), decided[signal_id][0])
        for signal_id, sent in published.items()
        if signal_id in decided
    ]


async def latency(
    redis: Redis, names: StreamNames, rate: float, seconds: float
) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """Publish at `rate`/s for `seconds`; latency = decision committed - signal published.

    `latency_ms` runs to the decision committed, as the issue defines it, bounded from above by
    the time of its OrderDecided entry (decision_spans); `latency_read_ms` to the bench reading
    that event, as a subscriber would. Also returns each signal's (sent, committed by) times.
    """
    after = await _last_id(redis, names.order_decisions)
    published: dict[str, float] = {}
    expected_total = int(rate * seconds)
    decided: dict[str, tuple[float, str]] = {}
    cursor = after
    stop = asyncio.Event()

    async def read() -> None:
        nonlocal cursor
        while not (stop.is_set() and len(decided) >= expected_total):
            response: Any = await redis.xread({names.order_decisions: cursor}, count=1000, block=200)
            at = time.time()
            for _, entries in response or []:
                for entry_id, fields in entries:
                    cursor = entry_id
                    decided[json.loads(fields["event"])["signal_id"]] = (at, str(entry_id))
            if stop.is_set() and time.monotonic() > give_up:
                return

    give_up = float("inf")
    entries = prebuild(expected_total, f"lat{int(time.time())}")
    reader = asyncio.create_task(read())
    published = await publish_at_rate(redis, names.signals, rate, seconds, entries)
    give_up = time.monotonic() + 30
    stop.set()
    await reader
    spans = decision_spans(published, decided)
    result = percentiles([(committed - sent) * 1000 for sent, committed, _ in spans])
    seen = percentiles([(read - sent) * 1000 for sent, _, read in spans])
    progress(
        f"orchestrator latency at {rate:.0f}/s over {seconds:.0f} s: {result}; to the event read: {seen}"
    )
    figures = {
        "latency_ms": {k: result[k] for k in ("p50", "p95", "p99")},
        "latency_max_ms": result["max"],
        "latency_read_ms": seen,
        "latency_events": len(spans),
        "latency_missing": len(published) - len(spans),
    }
    return figures, [(sent, committed) for sent, committed, _ in spans]
