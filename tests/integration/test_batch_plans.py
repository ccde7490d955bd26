"""The batch's statements run on cached generic plans that probe indexes, in its transaction only."""

from __future__ import annotations

import asyncpg
import pytest

from services.orchestrator import intents
from shared.dedup_key import DEDUP_KEY_HASH, dedup_key_hash


async def test_a_locked_transaction_switches_only_itself_to_cached_index_plans(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        async with intents.locked_transaction(conn, [("BTC_USDT", "BUY", "s1"), ("ETH_USDT", "SELL", "s2")]):
            assert conn.is_in_transaction()
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
    async with pool.acquire() as conn, intents.locked_transaction(conn, []):
        for sql in (intents.BATCH_STATE_SQL, intents.BATCH_STATE_LOCKED_SQL):
            await conn.execute(f"PREPARE batch_state AS {sql}")
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN EXECUTE batch_state('[]', '[]', now(), now(), 'brake', '{}'::text[])"
                )
            )
            await conn.execute("DEALLOCATE batch_state")
            assert "Seq Scan on order_intents" not in plan, plan
            assert "Index Cond: (signal_id = (s.id)::uuid)" in plan, plan  # one probe per signal
            assert "Index Scan using ix_order_intents_dedup_key" in plan, plan  # one range per key


async def test_the_lock_ids_are_hashtextextended_of_each_key(pool: asyncpg.Pool) -> None:
    # The ids earlier releases locked: orchestrators of both exclude each other during an upgrade.
    keys = [("BTC_USDT", "BUY", "s1"), ("ETH_USDT", "SELL", "s2"), ("BTC_USDT", "BUY", "s1")]
    async with pool.acquire() as conn, intents.locked_transaction(conn, keys):
        held = await conn.fetch(
            "SELECT (classid::bigint << 32) | objid::bigint AS id FROM pg_locks"
            " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        expected = await conn.fetch(
            "SELECT DISTINCT hashtextextended(k, 0) AS id FROM unnest($1::text[]) AS k",
            ["\x1f".join(k) for k in keys],
        )
    assert sorted(r["id"] for r in held) == sorted(r["id"] for r in expected)


async def test_the_dedup_index_key_is_the_lock_id_of_the_key(pool: asyncpg.Pool) -> None:
    # One hash for both: the index's expression over order_intents' columns, and the lock ids.
    keys = [("BTC_USDT", "BUY", "s1"), ("ETH-USDT", "SELL", "bench:x:1"), ("A_B", "BUY", "ünï")]
    for key in keys:
        indexed = await pool.fetchval(
            f"SELECT {DEDUP_KEY_HASH} FROM (SELECT $1::varchar(32) AS symbol, $2::varchar(4) AS side,"
            " $3::varchar(64) AS strategy) AS i",
            *key,
        )
        assert indexed == await pool.fetchval("SELECT hashtextextended($1, 0)", "\x1f".join(key))
    assert len({await pool.fetchval(f"SELECT {dedup_key_hash('$1', '$2', '$3')}", *k) for k in keys}) == 3


async def test_a_locked_transaction_commits_at_its_end_and_rolls_back_on_an_error(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("CREATE TEMP TABLE lt_probe (n int)")
        async with intents.locked_transaction(conn, [("A_B", "BUY", "s")]):
            await conn.execute("INSERT INTO lt_probe VALUES (1)")
        try:
            async with intents.locked_transaction(conn, [("A_B", "BUY", "s")]):
                await conn.execute("INSERT INTO lt_probe VALUES (2)")
                raise RuntimeError("the batch failed")
        except RuntimeError:
            pass
        assert not conn.is_in_transaction()
        assert [r["n"] for r in await conn.fetch("SELECT n FROM lt_probe")] == [1]
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["BTC_USDT\x1fBUY\x1fs1"],
        ["it's", 'say "hi"', "back\\slash", "\\'", "{,}", "NULL", "", "ünï", "a\nb", "\\\"'"],
    ],
)
async def test_text_array_literal_reads_back_as_the_values(pool: asyncpg.Pool, values: list[str]) -> None:
    assert await pool.fetchval(f"SELECT {intents.text_array_literal(values)}::text[]") == values


def test_text_array_literal_refuses_a_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        intents.text_array_literal(["a\x00b"])


async def test_a_locked_transaction_refuses_to_nest(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(RuntimeError, match="outside any transaction"):
            async with intents.locked_transaction(conn, [("A_B", "BUY", "s")]):
                pass
        assert conn.is_in_transaction()  # the outer one, untouched
