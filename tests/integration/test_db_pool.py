"""The shared asyncpg pool (a released connection is handed back as it is, transactions ended)
and the batch rows sent as one JSON text."""

from __future__ import annotations

import asyncpg

from services.orchestrator.app import open_pool
from shared.db import create_pool


async def _last_query(admin: asyncpg.Pool, pid: int) -> str:
    return str(await admin.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid))


async def test_release_sends_no_reset_round_trip(database_url: str, pool: asyncpg.Pool) -> None:
    own = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with own.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid() /* marker */")
        # asyncpg's default reset would have run `… RESET ALL` on release.
        assert "marker" in await _last_query(pool, pid)
    finally:
        await own.close()


async def test_a_transaction_left_open_is_rolled_back_on_release(database_url: str) -> None:
    own = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with own.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS pool_probe (n int)")
            tx = conn.transaction()
            await tx.start()
            await conn.execute("INSERT INTO pool_probe VALUES (1)")
            # released without commit or rollback
        async with own.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM pool_probe") == 0
    finally:
        await own.close()


async def test_pools_plan_each_statement_afresh_but_the_orchestrators_keeps_index_plans(
    database_url: str, pool: asyncpg.Pool
) -> None:
    assert await pool.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
    assert await pool.fetchval("SHOW enable_seqscan") == "on"
    own = await open_pool(database_url, in_flight=1)
    try:
        async with own.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            assert await conn.fetchval("SHOW enable_seqscan") == "off"
    finally:
        await own.close()


async def test_json_rows_arrive_exactly(pool: asyncpg.Pool) -> None:
    import uuid
    from datetime import UTC, datetime, timedelta, timezone
    from decimal import Decimal

    from shared.db import json_rows
    from shared.events import Side

    amounts = [Decimal("5E+4"), Decimal("0.000000000000000001"), Decimal("-12.50"), None, Decimal("1e17")]
    ids = [uuid.uuid4() for _ in amounts]
    at = [
        datetime(2026, 11, 26, 0, 58, 16, 457511, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=UTC),
        None,
        datetime(1999, 12, 31, 12, tzinfo=timezone(timedelta(hours=-8))),
    ]
    texts = ['quote " and \\ backslash', "é ü 漢字 🚀", "", None, "new\nline\ttab"]
    rows = [
        (i, None if a is None else str(a), t, s, Side.SELL)
        for i, a, t, s in zip(ids, amounts, at, texts, strict=True)
    ]
    back = await pool.fetch(
        "SELECT (r->>0)::uuid AS id, (r->>1)::numeric AS amount, (r->>2)::timestamptz AS at,"
        " r->>3 AS text, r->>4 AS side FROM jsonb_array_elements($1::text::jsonb) AS r",
        json_rows(rows),
    )
    assert [tuple(r) for r in back] == [
        (i, a, t, s, "SELL") for i, a, t, s in zip(ids, amounts, at, texts, strict=True)
    ]
