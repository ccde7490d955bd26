"""The physical limit the orchestrator is measured against: a bare Redis-stream → PostgreSQL loop.

The loop reads the stream in a consumer group (XREADGROUP COUNT 100), writes each
batch with one `INSERT … SELECT unnest(…) ON CONFLICT DO NOTHING` and acknowledges
it with one XACK. Nothing else: no validation, no dedup, no orders, no events.

It runs as its own OS process (as the orchestrator runs), measured two ways:
- `drain()`: N signals are published first; the process then drains them and reports
  events/s from its first read to its last XACK;
- `latency()`: the process consumes while signals are published at a steady rate; each
  row keeps `clock_timestamp()` at insert, so latency = row written - signal emitted.
`make bench` interleaves its drains with the orchestrator's (tests/bench/run.py); `measure()`
runs one of each alone.

Run alone: `python -m tests.bench.raw_baseline` (REDIS_URL and an admin DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg
from redis.asyncio import Redis

from tests.bench.load import (
    as_json,
    cpu_seconds,
    delete_keys,
    percentiles,
    prebuild,
    progress,
    publish_at_rate,
    publish_burst,
    run_loop,
    signal_entry,
)

GROUP = "raw"
BATCH = 100

TABLE = """
CREATE TABLE IF NOT EXISTS raw_signals (
    signal_id uuid PRIMARY KEY,
    symbol text NOT NULL,
    side text NOT NULL,
    price numeric NOT NULL,
    strategy text NOT NULL,
    emitted_at timestamptz NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

INSERT = (
    "INSERT INTO raw_signals (signal_id, symbol, side, price, strategy, emitted_at)"
    " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::text[],"
    " $6::timestamptz[]) ON CONFLICT DO NOTHING"
)


async def consume(redis_url: str, database_url: str, stream: str, expect: int, drain: bool) -> dict[str, Any]:
    """Run the bare loop until `expect` events are written; in drain mode wait for all of them first."""
    redis = Redis.from_url(redis_url)
    conn = await asyncpg.connect(database_url)
    try:
        try:
            await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        print(json.dumps({"ready": True}), flush=True)
        # Drain mode: start the clock only once every event is waiting (polling: Redis has no "wait for length").
        while drain and await redis.xlen(stream) < expect:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        written = 0
        started = time.perf_counter()
        cpu_started = time.process_time()
        pg_started = cpu_seconds([await conn.fetchval("SELECT pg_backend_pid()")])
        while written < expect:
            response: Any = await redis.xreadgroup(GROUP, "raw-1", {stream: ">"}, count=BATCH, block=1000)
            if not response:
                continue
            entries = response[0][1]
            events = [json.loads(fields[b"event"]) for _, fields in entries]
            await conn.execute(
                INSERT,
                [uuid.UUID(e["signal_id"]) for e in events],
                [e["symbol"] for e in events],
                [e["side"] for e in events],
                [e["price"] for e in events],
                [e["strategy"] for e in events],
                [_ts(e["emitted_at"]) for e in events],
            )
            await redis.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
            written += len(entries)
        elapsed = time.perf_counter() - started
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        cpu = {"client": time.process_time() - cpu_started, "postgres": cpu_seconds([backend]) - pg_started}
        return {"events": written, "elapsed_s": elapsed, "per_s": written / elapsed, "cpu_s": cpu}
    finally:
        await conn.close()
        await redis.aclose()


def _ts(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text)


def _start(redis_url: str, database_url: str, stream: str, expect: int, drain: bool) -> subprocess.Popen[str]:
    args = [
        sys.executable,
        "-m",
        "tests.bench.raw_baseline",
        "--consume",
        "--redis-url",
        redis_url,
        "--database-url",
        database_url,
        "--stream",
        stream,
        "--expect",
        str(expect),
    ]
    if drain:
        args.append("--drain")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line or not json.loads(line).get("ready"):
        proc.kill()
        raise RuntimeError(f"the raw loop did not start (exit {proc.wait()})")
    return proc


def _finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise RuntimeError(f"the raw loop did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"the raw loop exited {proc.returncode}")
    return dict(json.loads(out.strip().splitlines()[-1]))


async def prepare(database_url: str) -> None:
    """Create the loop's table."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(TABLE)
    finally:
        await conn.close()


async def drain(redis: Redis, redis_url: str, database_url: str, stream: str, events: int) -> dict[str, Any]:
    """Publish `events` signals to a new stream, then time the loop (its own process) draining them."""
    proc = _start(redis_url, database_url, stream, events, drain=True)
    entries = [signal_entry(i, "raw") for i in range(events)]
    await publish_burst(redis, stream, entries)
    drained = await asyncio.to_thread(_finish, proc, 300)
    progress(f"raw loop drained {events} events at {drained['per_s']:.0f}/s")
    return {
        "per_s": round(drained["per_s"]),
        "cpu_us_per_event": {k: round(v / events * 1e6, 1) for k, v in drained["cpu_s"].items()},
    }


async def latency(
    redis: Redis, redis_url: str, database_url: str, stream: str, *, rate: float, seconds: float
) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """Run the loop while signals are published at `rate` for `seconds`: latency = row written - published.

    Also returns each event's (published, written) times.
    """
    total = int(rate * seconds)
    entries = prebuild(total, "rawlat")
    proc = _start(redis_url, database_url, stream, total, drain=False)
    published = await publish_at_rate(redis, stream, rate, seconds, entries)
    await asyncio.to_thread(_finish, proc, 120)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT signal_id::text AS id, extract(epoch FROM written_at) AS at FROM raw_signals"
            " WHERE signal_id = ANY($1::uuid[])",
            list(published),
        )
    finally:
        await conn.close()
    spans = [(published[r["id"]], float(r["at"])) for r in rows]
    result = percentiles([(written - sent) * 1000 for sent, written in spans])
    progress(f"raw loop latency at {rate:.0f}/s: {result}")
    return {"raw_latency_ms": result, "raw_latency_events": len(spans)}, spans


async def measure(
    redis_url: str,
    database_url: str,
    prefix: str,
    *,
    events: int = 20_000,
    rate: float = 1000.0,
    seconds: float = 20.0,
) -> dict[str, Any]:
    """Measure the bare loop alone: drain throughput over `events`, latency at `rate` for `seconds`."""
    await prepare(database_url)
    redis = Redis.from_url(redis_url)
    try:
        drained = await drain(redis, redis_url, database_url, f"{prefix}raw-drain", events)
        late, _ = await latency(
            redis, redis_url, database_url, f"{prefix}raw-latency", rate=rate, seconds=seconds
        )
        return {
            "raw_baseline_per_s": drained["per_s"],
            "raw_cpu_us_per_event": drained["cpu_us_per_event"],
            **late,
        }
    finally:
        await redis.aclose()


def main() -> None:
    """Run the consumer (--consume), or measure the loop on its own database and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--consume", action="store_true")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--stream", default="")
    parser.add_argument("--expect", type=int, default=20_000)
    parser.add_argument("--drain", action="store_true")
    args = parser.parse_args()
    if args.consume:
        print(
            json.dumps(
                run_loop(consume(args.redis_url, args.database_url, args.stream, args.expect, args.drain))
            )
        )
        return
    from tests.support.servers import create_run_database, drop_database, postgres_admin_url, redis_server_url

    admin = postgres_admin_url()
    name = f"intentflow_bench_raw_{uuid.uuid4().hex[:8]}"
    url = create_run_database(admin, name)
    redis_url = redis_server_url()
    prefix = f"bench-raw-{uuid.uuid4().hex[:6]}:"
    try:
        print(as_json(run_loop(measure(redis_url, url, prefix))))
    finally:
        drop_database(admin, name)
        run_loop(delete_keys(redis_url, prefix))


if __name__ == "__main__":
    main()
