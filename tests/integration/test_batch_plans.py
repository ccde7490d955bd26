"""The batch's statements run on cached generic plans that probe indexes, in its transaction only."""

from __future__ import annotations

import asyncpg

from services.orchestrator import intents


async def test_lock_keys_switches_only_its_transaction_to_cached_index_plans(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        async with conn.transaction():
            await intents.lock_keys(conn, [("BTC_USDT", "BUY", "s1"), ("ETH_USDT", "SELL", "s2")])
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            assert await conn.fetchval("SHOW enable_seqscan") == "off"
            locks = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            assert locks == 2
        # The connection goes back to the pool planning every statement afresh, unlocked.
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        assert await conn.fetchval("SHOW enable_seqscan") == "on"
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0


async def test_the_batch_read_planned_on_empty_tables_probes_the_indexes(pool: asyncpg.Pool) -> None:
    # A fresh deploy: the generic plan is made while order_intents is empty, and kept.
    async with pool.acquire() as conn, conn.transaction():
        await intents.lock_keys(conn, [])
        for sql in (intents.BATCH_STATE_SQL, intents.BATCH_STATE_LOCKED_SQL):
            await conn.execute(f"PREPARE batch_state AS {sql}")
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN EXECUTE batch_state('{}'::uuid[], '{}'::text[], '{}'::text[], '{}'::text[],"
                    " now(), now(), 'brake', '{}'::text[])"
                )
            )
            await conn.execute("DEALLOCATE batch_state")
            assert "Seq Scan on order_intents" not in plan, plan
            assert "Index Cond: (signal_id = s.id)" in plan, plan  # one probe per signal
            assert "Index Scan using ix_order_intents_dedup" in plan, plan  # one range per key
