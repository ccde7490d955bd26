"""Time the recent-signals query over one million intents and one million messages.

Run: `DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m tests.bench.bench_diagnostics`
(an admin URL: the bench creates its own database, migrates it, plants the rows with
generate_series, VACUUM ANALYZEs, times the query, and drops the database). Prints one
JSON object; `diagnostics_ms` is the median of the 12-hour query.

With a Redis URL (as `make bench` runs it) the diagnostics service then runs over the planted
database as its own process (`intentflow run diagnostics`, as compose runs it) and answers
`GET /api/diagnostics/recent-signals?hours=12` (its default limit, 500) RUNS times and
`hours=168` SERVICE_RUNS_168H times: `diagnostics_http_ms` is the median of the 12-hour
answers, timed at the client, and `rss` the service's resident memory over those requests.

The planted month: one intent per ~2.6 s over 30 days (80% placed, 8% failed, 8% dedup,
4% blocked), a SIGNAL message for 920,000 of them (1% undelivered, 0.1% without a
decision trace) and an ORDER FAILED message for each failed one: 1,000,000 messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from services.diagnostics.invariants import Window, recent_signals
from shared.db import create_pool, migrate
from shared.embedded import free_port
from tests.bench.load import delete_keys
from tests.support.procs import Proc, intentflow
from tests.support.servers import create_run_database, drop_database

INTENTS = 1_000_000
SIGNAL_MESSAGES = 920_000
RUNS = 7
SERVICE_RUNS_168H = 3

PLANT_INTENTS = f"""
INSERT INTO order_intents (id, signal_id, idempotency_key, symbol, side, strategy, source, price,
                           quantity, status, decision_type, reason_code, reason_message,
                           emitted_at, decided_at, created_at, updated_at)
SELECT md5('intent' || g)::uuid, md5('signal' || g)::uuid, 'if-' || md5('intent' || g),
       (ARRAY['BTC_USDT', 'ETH_USDT', 'SOL_USDT', 'XRP_USDT'])[1 + g % 4],
       CASE WHEN g % 2 = 0 THEN 'BUY' ELSE 'SELL' END, 'rsi_ema:' || (g % 7), 'strategy', 50000, 0.002,
       s.status, s.decision_type, s.reason_code, 'planted',
       t, t + interval '1 second', t, t + interval '1 second'
FROM generate_series(1, {INTENTS}) AS g,
     LATERAL (SELECT now() - g * (interval '30 days' / {INTENTS}) AS t) AS ts,
     LATERAL (SELECT CASE WHEN g % 25 IN (0, 1) THEN 'ORDER_FAILED'
                          WHEN g % 25 IN (2, 3) THEN 'DEDUP_SKIPPED'
                          WHEN g % 25 = 4 THEN 'BLOCKED_LIVE_TRADING'
                          ELSE 'ORDER_PLACED' END AS status,
                     CASE WHEN g % 25 IN (0, 1) THEN 'FAILED'
                          WHEN g % 25 IN (2, 3, 4) THEN 'SKIPPED'
                          ELSE 'EXECUTED' END AS decision_type,
                     CASE WHEN g % 25 IN (0, 1) THEN 'INSUFFICIENT_FUNDS'
                          WHEN g % 25 IN (2, 3) THEN 'DUPLICATE_SIGNAL'
                          WHEN g % 25 = 4 THEN 'ORDER_BLOCKED_LIVE_TRADING'
                          ELSE 'ORDER_PLACED' END AS reason_code) AS s
"""

PLANT_SIGNAL_MESSAGES = f"""
INSERT INTO telegram_messages (signal_id, kind, chat_id, message, symbol, blocked,
                               telegram_message_id, timestamp, decision_type, reason_code, reason_message)
SELECT i.signal_id, 'SIGNAL', '-100123',
       CASE WHEN i.side = 'BUY' THEN '🟢 <b>BUY SIGNAL</b> ' ELSE '🔴 <b>SELL SIGNAL</b> ' END
         || i.symbol || ' @ 50000 · ' || i.strategy,
       i.symbol, g % 100 = 0, g, i.created_at + interval '2 seconds',
       CASE WHEN g % 1000 <> 7 THEN i.decision_type END, i.reason_code, i.reason_message
FROM generate_series(1, {SIGNAL_MESSAGES}) AS g
JOIN order_intents i ON i.signal_id = md5('signal' || g)::uuid
"""

PLANT_FAILURE_MESSAGES = """
INSERT INTO telegram_messages (signal_id, kind, chat_id, message, symbol, blocked,
                               telegram_message_id, timestamp)
SELECT signal_id, 'ORDER_FAILED', '-100123',
       '❌ <b>ORDER FAILED</b> ' || symbol || ' ' || side || ': INSUFFICIENT_FUNDS', symbol, false,
       NULL, decided_at + interval '3 seconds'
FROM order_intents WHERE status = 'ORDER_FAILED'
"""


async def _plant(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(PLANT_INTENTS)
        await conn.execute(PLANT_SIGNAL_MESSAGES)
        await conn.execute(PLANT_FAILURE_MESSAGES)
        await conn.execute("VACUUM ANALYZE order_intents")
        await conn.execute("VACUUM ANALYZE telegram_messages")
        return {
            "intents": int(await conn.fetchval("SELECT count(*) FROM order_intents")),
            "messages": int(await conn.fetchval("SELECT count(*) FROM telegram_messages")),
        }
    finally:
        await conn.close()


async def _time(url: str, hours: int) -> tuple[float, int]:
    pool = await create_pool(url)
    try:
        window = Window(hours=hours, limit=500, grace_seconds=60)
        report = await recent_signals(pool, window)  # warm the cache and the plans
        samples = []
        for _ in range(RUNS):
            started = time.perf_counter()
            report = await recent_signals(pool, window)
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples), report.counts.total_signals
    finally:
        await pool.close()


def time_service(base_url: str, hours: int, runs: int) -> tuple[float, int]:
    """Median ms of `runs` answers of the service's recent-signals at `hours` (after one to warm
    it), timed at the client; and the window's total_signals."""
    samples = []
    with httpx.Client(base_url=base_url, timeout=120) as http:
        body: dict[str, Any] = {}
        for n in range(runs + 1):
            started = time.perf_counter()
            answer = http.get("/api/diagnostics/recent-signals", params={"hours": hours})
            if answer.status_code != 200:
                raise RuntimeError(f"diagnostics answered {answer.status_code}: {answer.text[:300]}")
            body = answer.json()
            if n:
                samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), int(body["counts"]["total_signals"])


def serve_and_time(url: str, redis_url: str, work: Path, *, prefix: str | None = None) -> dict[str, Any]:
    """Run the diagnostics service over `url` as its own process; time its recent-signals answers
    (time_service) and sample its resident memory meanwhile. Deletes the Redis keys it made."""
    from tests.bench.run import RssSampler, service_env, wait_http

    port = free_port()
    prefix = prefix or f"bench-diag-{uuid.uuid4().hex[:8]}:"
    env = {**service_env(redis_url, url, prefix, work), "DIAGNOSTICS_PORT": str(port)}
    proc = Proc(intentflow("run", "diagnostics"), env, work / "diagnostics.log").start()
    sampler = RssSampler()
    try:
        base = f"http://127.0.0.1:{port}"
        asyncio.run(wait_http(f"{base}/healthz", proc, timeout=60))
        sampler.watch("diagnostics", proc.pid)
        sampler.start()
        ms_12, signals_12 = time_service(base, 12, RUNS)
        ms_168, _ = time_service(base, 168, SERVICE_RUNS_168H)
    finally:
        sampler.stop()
        code = proc.terminate()
        # Its watchdog's first round (at start, as in production) may republish the planted month's
        # signals without an intent into this prefix's stream.
        asyncio.run(delete_keys(redis_url, prefix))
    if code != 0:
        raise RuntimeError(f"diagnostics exited {code}:\n{proc.output()[-2000:]}")
    peaks, flat, detail = sampler.summary()
    return {
        "diagnostics_http_ms": round(ms_12, 2),
        "diagnostics_http_ms_168h": round(ms_168, 2),
        "http_signals_in_12h": signals_12,
        "rss": {
            "peak_mb": peaks.get("diagnostics"),
            "flat": flat.get("diagnostics"),
            **detail.get("diagnostics", {}),
        },
    }


def measure(admin_url: str, redis_url: str | None = None) -> dict[str, Any]:
    """Plant the month in a database of its own, time the query (and the service answering it,
    given a Redis URL), drop the database; return the figures."""
    name = f"intentflow_bench_diag_{uuid.uuid4().hex[:8]}"
    url = create_run_database(admin_url, name)
    served: dict[str, Any] = {}
    try:
        migrate(url)
        started = time.perf_counter()
        planted = asyncio.run(_plant(url))
        plant_s = time.perf_counter() - started
        ms_12, signals_12 = asyncio.run(_time(url, 12))
        ms_168, signals_168 = asyncio.run(_time(url, 168))
        if redis_url is not None:
            with tempfile.TemporaryDirectory(prefix="intentflow-bench-diag-") as work:
                served = serve_and_time(url, redis_url, Path(work))
    finally:
        drop_database(admin_url, name)
    return {
        "diagnostics_ms": round(ms_12, 2),
        "diagnostics_ms_168h": round(ms_168, 2),
        "signals_in_12h": signals_12,
        "signals_in_168h": signals_168,
        **served,
        **planted,
        "plant_s": round(plant_s, 1),
        "runs": RUNS,
    }


def main() -> None:
    """Print the figures as one JSON object."""
    admin_url = os.environ.get("DATABASE_URL")
    if not admin_url:
        sys.exit("set DATABASE_URL to an admin PostgreSQL URL (the bench creates its own database)")
    print(json.dumps(measure(admin_url)))


if __name__ == "__main__":
    main()
