"""The shared asyncpg pool: a released connection is handed back as it is, transactions ended."""

from __future__ import annotations

import asyncpg

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


async def test_decimals_sent_as_text_arrive_exactly(pool: asyncpg.Pool) -> None:
    from decimal import Decimal

    from shared.db import numeric_texts

    values = [Decimal("5E+4"), Decimal("0.000000000000000001"), Decimal("-12.50"), None, Decimal("1e17")]
    back = await pool.fetchval("SELECT $1::text[]::numeric[]", numeric_texts(values))
    assert back == values
