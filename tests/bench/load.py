"""Load generation for the benchmarks: signals built fast, published in bursts or at a steady rate."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from redis.asyncio import Redis

from shared.events import SignalEmitted
from shared.streams import EVENT_FIELD, encode_entry

T = TypeVar("T")

SYMBOLS = ("BTC_USDT", "ETH_USDT", "SOL_USDT", "XRP_USDT")


def progress(message: str) -> None:
    """Show one progress line on stderr (stdout carries the JSON result)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def signal_entry(
    index: int, tag: str, *, side: str = "BUY", symbol: str | None = None, emitted_at: datetime | None = None
) -> dict[str, str]:
    """A valid SignalEmitted entry, emitted now, with a strategy no other signal shares (no dedup)."""
    event = SignalEmitted.model_validate(
        {
            "signal_id": uuid.uuid4(),
            "symbol": symbol or SYMBOLS[index % len(SYMBOLS)],
            "side": side,
            "price": "50000",
            "strategy": f"bench:{tag}:{index}",
            "source": "strategy",
            "emitted_at": emitted_at or datetime.now(UTC),
        }
    )
    return encode_entry(event)


# The emitted_at of a signal built ahead of a rate run, replaced by the time it is sent.
_PLACEHOLDER_AT = datetime(2000, 1, 1, tzinfo=UTC)
_PLACEHOLDER_TEXT = "2000-01-01T00:00:00Z"


class Prebuilt(NamedTuple):
    """A signal entry built before the clock starts; `stamped` gives it the send time as emitted_at."""

    signal_id: str
    fields: dict[str, str]

    def stamped(self, at: str) -> dict[str, str]:
        return {**self.fields, EVENT_FIELD: self.fields[EVENT_FIELD].replace(_PLACEHOLDER_TEXT, at, 1)}


def prebuild(count: int, tag: str) -> list[Prebuilt]:
    """`count` distinct signal entries, built (and validated) now, for publish_at_rate to send.

    Building one (pydantic, JSON) costs the publisher ~25 µs here: not the system's work, so
    done before the clock starts rather than while signals are timed on the cores the services
    under test share with the publisher.
    """
    out = []
    for i in range(count):
        fields = signal_entry(i, tag, emitted_at=_PLACEHOLDER_AT)
        if fields[EVENT_FIELD].count(_PLACEHOLDER_TEXT) != 1:
            raise RuntimeError(f"the placeholder time is not in the entry exactly once: {fields}")
        out.append(Prebuilt(entry_signal_id(fields), fields))
    return out


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def entry_signal_id(entry: dict[str, str]) -> str:
    """The signal_id of an entry built by signal_entry."""
    return str(json.loads(entry["event"])["signal_id"])


async def publish_burst(
    redis: Redis, stream: str, entries: Sequence[dict[str, str]], chunk: int = 500
) -> None:
    """XADD entries as fast as Redis takes them: pipelined chunks."""
    for start in range(0, len(entries), chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for fields in entries[start : start + chunk]:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            await pipe.execute()


async def publish_at_rate(
    redis: Redis, stream: str, rate: float, seconds: float, entries: Sequence[Prebuilt]
) -> dict[str, float]:
    """Publish `rate` entries a second for `seconds`; return {signal_id: wall time published}.

    The entries are built beforehand (prebuild); each gets the time it is sent as emitted_at.
    The time is taken just before it is sent, so a latency measured from it includes the XADD
    itself. Entries that fall due together, because the loop woke late, go out in one pipeline.
    """
    total = int(rate * seconds)
    if len(entries) < total:
        raise ValueError(f"{total} entries are needed for {rate:g}/s over {seconds:g} s, not {len(entries)}")
    published: dict[str, float] = {}
    started = time.monotonic()
    index = 0
    while index < total:
        now = time.monotonic()
        due = min(total, int((now - started) * rate) + 1)
        if due > index:
            at = time.time()
            stamp = _iso_now()
            batch = entries[index:due]
            if len(batch) == 1:  # the usual case; a pipeline of one costs ~25 % more CPU (175 vs 140 µs here)
                await redis.xadd(stream, batch[0].stamped(stamp))  # type: ignore[arg-type]
            else:
                async with redis.pipeline(transaction=False) as pipe:
                    for entry in batch:
                        pipe.xadd(stream, entry.stamped(stamp))  # type: ignore[arg-type]
                    await pipe.execute()
            for entry in batch:
                published[entry.signal_id] = at
            index = due
        next_at = started + index / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return published


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a bench's coroutine under uvloop, as the services run (asyncio where it is missing)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def delete_keys(redis_url: str, prefix: str) -> None:
    """Delete every key a bench run made under its prefix (streams, groups' state, throttles)."""
    redis = Redis.from_url(redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


def cpu_by_pid(pids: Sequence[int]) -> dict[int, float]:
    """User+system CPU seconds used so far by each of these processes still running."""
    import psutil

    seconds: dict[int, float] = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        seconds[pid] = times.user + times.system
    return seconds


def cpu_seconds(pids: Sequence[int]) -> float:
    """User+system CPU seconds used so far by these processes (gone ones count 0)."""
    return sum(cpu_by_pid(pids).values())


def cpu_since(before: Mapping[int, float]) -> float:
    """CPU seconds the processes of `before` (cpu_by_pid) used since, over those still running.

    One that exited in between counts 0 rather than taking what it had used before out of the
    sum (a window's figure could otherwise come out below zero).
    """
    after = cpu_by_pid(list(before))
    return sum(after[pid] - before[pid] for pid in after)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy so far, all cores (not idle, not waiting on I/O)."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


PRESSURE = Path("/proc/pressure")


def pressure_totals(root: Path = PRESSURE) -> dict[str, int]:
    """Microseconds so far in which some task on this machine waited for a CPU, for I/O or for
    memory: the `some` totals of the kernel's pressure stall information (none where it keeps
    none)."""
    totals: dict[str, int] = {}
    for resource in ("cpu", "io", "memory"):
        try:
            lines = (root / resource).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("some ") and "total=" in line:
                totals[resource] = int(line.rsplit("total=", 1)[1])
    return totals


class CpuWindow:
    """The CPU each party used over a window, from /proc at its start and end.

    `with CpuWindow(orchestrator=[pid], postgres=backend_pids(db)) as w: …`, then `w.seconds`
    (CPU seconds per party, and `machine_busy` for the whole machine) and `w.cores` (the same
    over the window's length). A party is a list of pids, each counted by cpu_since; on two
    cores, it shows who holds the CPU a signal in hand waits for. `w.pressure_ms`: the ms of the
    window in which some task waited for a CPU, for I/O or for memory (pressure_totals).
    """

    def __init__(self, **parties: Sequence[int]) -> None:
        self._parties = parties
        self._before: dict[str, dict[int, float]] = {}
        self._busy = 0.0
        self._started = 0.0
        self._pressure: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.cores: dict[str, float] = {}
        self.pressure_ms: dict[str, float] = {}

    def start(self) -> CpuWindow:
        """Take the start figures (also `with CpuWindow(…)`)."""
        self._before = {name: cpu_by_pid(pids) for name, pids in self._parties.items()}
        self._busy = machine_busy_seconds()
        self._pressure = pressure_totals()
        self._started = time.monotonic()
        return self

    def stop(self) -> None:
        """Take the end figures: fill `seconds` and `cores`."""
        elapsed = time.monotonic() - self._started
        self.seconds = {"machine_busy": machine_busy_seconds() - self._busy}
        self.seconds.update({name: cpu_since(before) for name, before in self._before.items()})
        self.cores = {name: round(value / elapsed, 3) for name, value in self.seconds.items()}
        after = pressure_totals()
        self.pressure_ms = {
            k: round((after[k] - self._pressure[k]) / 1000, 1) for k in after if k in self._pressure
        }

    def per(self, count: int, unit: float = 1e6) -> dict[str, float]:
        """Each party's CPU (not the machine's) per one of `count`, in seconds × unit (µs by default)."""
        return {name: self.seconds[name] / count * unit for name in self._parties}

    def __enter__(self) -> CpuWindow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_server_pids() -> list[int]:
    """The redis-server processes on this machine (none when Redis runs elsewhere)."""
    import psutil

    return [
        proc.pid
        for proc in psutil.process_iter(["name"])
        if (proc.info.get("name") or "").startswith("redis-server")
    ]


def backend_pids(database: str) -> list[int]:
    """The PostgreSQL backends serving clients of a database on this machine (their title
    names it); not autovacuum workers, whose work follows the writes on their own time."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if cmdline.startswith("postgres: ") and f" {database} " in cmdline and "autovacuum" not in cmdline:
            pids.append(proc.pid)
    return pids


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and max of samples (nearest-rank), rounded to 0.01 ms."""
    if not samples_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(samples_ms)

    def rank(p: float) -> float:
        k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
        return round(ordered[k], 2)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": round(ordered[-1], 2)}


def as_json(value: Any) -> str:
    """Render a result as one JSON line."""
    return json.dumps(value, default=str)
