"""Time the recent-signals query over one million intents and one million messages.

Run: `DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m tests.bench.bench_diagnostics`
(an admin URL: the bench creates its own database, migrates it, plants the rows with
generate_series, VACUUM ANALYZEs, times the query, and drops the database). Prints one
JSON object; `diagnostics_ms` is the median of the 12-hour query.

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
import time
import uuid
from typing import Any

import asyncpg

from services.diagnostics.invariants import Window, recent_signals
from shared.db import create_pool, migrate
from tests.support.servers import create_run_database, drop_database

INTENTS = 1_000_000
SIGNAL_MESSAGES = 920_000
RUNS = 7

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


def measure(admin_url: str) -> dict[str, Any]:
    """Plant the month in a database of its own, time the query, drop the database; return the figures."""
    name = f"intentflow_bench_diag_{uuid.uuid4().hex[:8]}"
    url = create_run_database(admin_url, name)
    try:
        migrate(url)
        started = time.perf_counter()
        planted = asyncio.run(_plant(url))
        plant_s = time.perf_counter() - started
        ms_12, signals_12 = asyncio.run(_time(url, 12))
        ms_168, signals_168 = asyncio.run(_time(url, 168))
    finally:
        drop_database(admin_url, name)
    return {
        "diagnostics_ms": round(ms_12, 2),
        "diagnostics_ms_168h": round(ms_168, 2),
        "signals_in_12h": signals_12,
        "signals_in_168h": signals_168,
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
