"""Where a trickle batch's time goes: the orchestrator's batches timed step by step, in its process.

`make bench-steps` (`python -m tests.bench.steps`) runs one orchestrator process on a fresh
database, as `make bench` does, with timers around each batch and around the three round trips
on its path, publishes 1,000 signals a second for 20 s (BENCH_RATE, BENCH_SECONDS) and prints
one JSON object: the latency as `make bench` measures it, and for the batches of that window

- `batch_ms`: each batch from its entries in hand to its settlement returned (wall clock);
- `step_ms`: the same per step: `read` (the key locks and the batch read, one PostgreSQL round
  trip), `commit` (the insert, its COMMIT and the locks let go, one round trip), `settle` (the
  events published and the entries acknowledged, one Redis script) and `python` (the rest: the
  orchestrator's own work between them);
- `cpu_ms`: the orchestrator's own CPU per batch (its process's, over the batch);
- `slow`: the batches slower than BENCH_SLOW_MS (6): how many, and how often each step was the
  longest of the batch; `own_cpu` counts those in which the orchestrator's own CPU was most of
  the batch's time;
- `latency_disk` and `latency_over_10ms`: the disk probe's slow completions in the window and
  how many of the signals over 10 ms waited across one, as `make bench` reports them.

The timers wrap the orchestrator's functions in the child process only (`--child`): the
product runs unchanged. Together they add ~6 µs of CPU a batch here (two process-time reads
at 0.5 µs, the wall-clock reads at 0.14 µs, the wrappers' calls), ~0.5 % of a batch's ~1.2 ms.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.db import migrate
from shared.redis import create_redis
from shared.streams import StreamNames
from tests.bench import bench_orchestrator
from tests.bench.disk_probe import DiskProbe, clear_of_slow_disk, database_stat_path, signals_across
from tests.bench.load import delete_keys, percentiles, progress, run_loop
from tests.bench.run import _wait_decided, _write_out, service_env
from tests.support import servers
from tests.support.procs import Proc, wait_for_log

STEPS = ("read", "commit", "settle")
"""The round trips on a batch's path, as `step_ms` names them; `python` is the rest."""

Record = dict[str, float]
"""One batch: `at` (wall time it ended), `ms`, `cpu_ms`, `entries`, and ms per step it took."""

_batch: contextvars.ContextVar[Record | None] = contextvars.ContextVar("intentflow_bench_batch", default=None)


def _timed_step(step: str, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(func)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await func(*args, **kwargs)
        finally:
            record = _batch.get()
            if record is not None:
                record[step] = record.get(step, 0.0) + (time.perf_counter() - started) * 1000

    return timed


def _timed_batch(func: Callable[..., Awaitable[Any]], records: list[Record]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(func)
    async def timed(self: Any, entries: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
        record: Record = {"entries": float(len(entries))}
        token = _batch.set(record)  # a task's own context: batches in flight at once stay apart
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return await func(self, entries, *args, **kwargs)
        finally:
            _batch.reset(token)
            record["ms"] = (time.perf_counter() - started) * 1000
            record["cpu_ms"] = (time.process_time() - cpu) * 1000
            record["at"] = time.time()
            records.append(record)

    return timed


@contextlib.contextmanager
def step_timers(records: list[Record]) -> Iterator[list[Record]]:
    """Time every batch the orchestrator handles, and its steps, into `records`, until exit.

    Wraps StreamConsumer.process (a batch: decode, handle, settle), key_locks.lock_and_read
    (`read`), KeyLocks.commit_and_release (`commit`) and StreamConsumer.settle (`settle`); the
    originals are put back on exit.
    """
    from services.orchestrator import key_locks
    from shared.consumer import StreamConsumer

    patched: list[tuple[Any, str, Any]] = [
        (StreamConsumer, "process", _timed_batch(StreamConsumer.process, records)),
        (key_locks, "lock_and_read", _timed_step("read", key_locks.lock_and_read)),
        (
            key_locks.KeyLocks,
            "commit_and_release",
            _timed_step("commit", key_locks.KeyLocks.commit_and_release),
        ),
        (StreamConsumer, "settle", _timed_step("settle", StreamConsumer.settle)),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patched]
    for owner, name, wrapper in patched:
        setattr(owner, name, wrapper)
    try:
        yield records
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def summarize(
    records: Sequence[Mapping[str, float]], *, since: float, until: float, slow_ms: float
) -> dict[str, Any]:
    """What the batches that ended in [since, until] spent, by step; the slow ones by longest step."""
    window = [r for r in records if since <= r["at"] <= until]
    if not window:
        raise ValueError("no batch ended in the window: was the orchestrator running?")
    steps = {step: [r.get(step, 0.0) for r in window] for step in STEPS}
    steps["python"] = [max(0.0, r["ms"] - sum(r.get(s, 0.0) for s in STEPS)) for r in window]
    slow = [r for r in window if r["ms"] > slow_ms]
    longest = dict.fromkeys((*STEPS, "python"), 0)
    for r in slow:
        parts = {step: r.get(step, 0.0) for step in STEPS}
        parts["python"] = r["ms"] - sum(parts.values())
        longest[max(parts, key=lambda step: parts[step])] += 1
    return {
        "batches": len(window),
        "signals_per_batch": round(sum(r["entries"] for r in window) / len(window), 2),
        "batch_ms": percentiles([r["ms"] for r in window]),
        "step_ms": {step: percentiles(values) for step, values in steps.items()},
        "cpu_ms": {
            **percentiles([r["cpu_ms"] for r in window]),
            "mean": round(sum(r["cpu_ms"] for r in window) / len(window), 3),
        },
        "slow": {
            "over_ms": slow_ms,
            "batches": len(slow),
            "share": round(len(slow) / len(window), 4),
            "longest_step": longest,
            "own_cpu": sum(1 for r in slow if r["cpu_ms"] > r["ms"] / 2),
        },
    }


def child(out: Path) -> None:
    """Run `intentflow run orchestrator` in this process with step_timers; write the records to out."""
    from services.entry import main

    records: list[Record] = []
    sys.argv = ["intentflow", "run", "orchestrator"]
    with step_timers(records):
        try:
            main()
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise
        finally:
            out.write_text(json.dumps(records))


async def measure(
    redis_url: str, database_url: str, work: Path, *, rate: float, seconds: float, slow_ms: float
) -> dict[str, Any]:
    """One timed orchestrator, a warm-up, then `rate` signals a second for `seconds`."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    names = StreamNames(prefix)
    out = work / "batches.json"
    proc = Proc(
        [sys.executable, "-m", "tests.bench.steps", "--child", str(out)],
        service_env(redis_url, database_url, prefix, work),
        work / "orchestrator.log",
    )
    redis = create_redis(redis_url)
    try:
        proc.start()
        wait_for_log(proc, "orchestrator consuming", timeout=60)
        progress("orchestrator up (timed); warming up with 1000 signals")
        await _wait_decided(redis, names, 1000)
        await _write_out(database_url)
        progress(f"{rate:.0f} signals/s for {seconds:.0f} s")
        disk_stat = await database_stat_path(database_url)
        since = time.time()
        with DiskProbe(disk_stat) as disk:
            result, spans = await bench_orchestrator.latency(redis, names, rate, seconds)
        until = time.time()
        result["latency_disk"] = disk.result
        result["latency_over_10ms"] = signals_across(spans, disk.slow_at)
        result["latency_clear_of_slow_disk_ms"] = clear_of_slow_disk(spans, disk.slow_at)
    finally:
        code = proc.terminate()
        await redis.aclose()
        await delete_keys(redis_url, prefix)
    if code != 0 or not out.exists():
        raise RuntimeError(f"the timed orchestrator exited {code}:\n{proc.output()[-3000:]}")
    records = json.loads(out.read_text())
    return {**result, **summarize(records, since=since, until=until, slow_ms=slow_ms)}


def main() -> None:
    """Print the JSON object (see the module's docstring)."""
    if sys.argv[1:2] == ["--child"]:
        child(Path(sys.argv[2]))
        return
    rate = float(os.environ.get("BENCH_RATE", "1000"))
    seconds = float(os.environ.get("BENCH_SECONDS", "20"))
    slow_ms = float(os.environ.get("BENCH_SLOW_MS", "6"))
    admin = servers.postgres_admin_url()
    redis_url = servers.redis_server_url()
    name = f"intentflow_steps_{uuid.uuid4().hex[:8]}"
    database_url = servers.create_run_database(admin, name)
    try:
        migrate(database_url)
        with tempfile.TemporaryDirectory(prefix="intentflow-steps-") as work:
            result = run_loop(
                measure(redis_url, database_url, Path(work), rate=rate, seconds=seconds, slow_ms=slow_ms)
            )
    finally:
        servers.drop_database(admin, name)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
