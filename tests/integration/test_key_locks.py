"""The batch's key locks without a transaction block: held from its read to its committed insert, then let go."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.orchestrator import key_locks
from services.orchestrator.decide import DedupKey, dedup_key
from services.orchestrator.exchanges.paper import PaperExchange
from services.orchestrator.handlers import OrderPipeline
from services.orchestrator.intents import BatchRead
from shared.consumer import Delivery
from shared.events import SignalEmitted
from shared.streams import StreamNames
from tests.support.eventually import eventually
from tests.support.pipeline import signal

WAITING_ON_A_KEY = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND pid <> pg_backend_pid()"
)


async def _lock_ids(pool: asyncpg.Pool, keys: list[DedupKey]) -> list[int]:
    rows = await pool.fetch(
        "SELECT DISTINCT hashtextextended(k, 0) AS id FROM unnest($1::text[]) AS k",
        ["\x1f".join(k) for k in keys],
    )
    return sorted(r["id"] for r in rows)


async def _held_by(pool: asyncpg.Pool, pid: int) -> list[int]:
    rows = await pool.fetch(
        "SELECT (classid::bigint << 32) | objid::bigint AS id FROM pg_locks"
        " WHERE locktype = 'advisory' AND granted AND pid = $1",
        pid,
    )
    return sorted(r["id"] for r in rows)


@contextlib.asynccontextmanager
async def _holding_key(pool: asyncpg.Pool, key: DedupKey) -> AsyncIterator[asyncpg.Connection]:
    """A transaction holding a key's lock as the transaction path (and earlier releases) take it."""
    async with pool.acquire() as conn:
        await conn.execute("BEGIN")
        try:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "\x1f".join(key))
            yield conn
        finally:
            if conn.is_in_transaction():  # the test commits it; else rolled back here
                await conn.execute("ROLLBACK")


async def _pipeline(pool: asyncpg.Pool, names: StreamNames, make_settings: Any) -> OrderPipeline:
    settings = make_settings(PAPER_BALANCES="USDT=1000000").trading
    exchange = PaperExchange(pool, settings.balances, settings.reject_symbols)
    await exchange.start()
    return OrderPipeline(
        pool=pool, exchange=exchange, trading=settings, decisions_stream=names.order_decisions
    )


async def _read(conn: asyncpg.Connection, signals: list[SignalEmitted]) -> key_locks.BatchState:
    read = BatchRead(
        [s.signal_id for s in signals],
        sorted({dedup_key(s) for s in signals}),
        min(s.emitted_at for s in signals),
        max(s.emitted_at for s in signals),
        60.0,
        ["BTC", "USDT"],
    )
    return await key_locks.lock_and_read(conn, read)


async def test_the_read_holds_each_key_for_the_session_until_the_block_ends(pool: asyncpg.Pool) -> None:
    signals = [signal("BTC_USDT", "BUY"), signal("ETH_USDT", "SELL"), signal("BTC_USDT", "BUY")]
    keys = sorted({dedup_key(s) for s in signals})
    locks = key_locks.KeyLocks(pool)
    async with locks.connection() as conn:
        pid = conn.get_server_pid()
        state = await _read(conn, signals)
        # Outside any transaction, and still held: the ids of the transaction path's locks.
        assert not conn.is_in_transaction()
        assert await _held_by(pool, pid) == await _lock_ids(pool, keys)
    assert state.recorded == {} and state.active == []
    assert set(state.held) == {"BTC", "USDT"}  # created at 0 where nobody held one
    await locks.wait_released()
    assert await _held_by(pool, pid) == []
    assert await pool.fetchval("SELECT count(*) FROM paper_balances WHERE asset IN ('BTC', 'USDT')") == 2


async def test_a_batch_waits_for_its_key_and_then_sees_what_the_holder_committed(
    pool: asyncpg.Pool, names: StreamNames, make_settings
) -> None:
    pipeline = await _pipeline(pool, names, make_settings)
    strategy = f"wait:{uuid.uuid4().hex[:8]}"
    late = signal("BTC_USDT", "BUY", "50000", strategy)
    async with _holding_key(pool, dedup_key(late)) as holder:
        # The holder records an active intent of the same key, inside the window, and has not
        # committed it when the batch starts.
        intent_id = uuid.uuid4()
        await holder.execute(
            "INSERT INTO order_intents (id, signal_id, idempotency_key, symbol, side, strategy, source,"
            " price, status, emitted_at) VALUES ($1::uuid, $2, 'if-' || replace($1::uuid::text, '-', ''), 'BTC_USDT',"
            " 'BUY', $3, 'manual', 50000, 'ORDER_PLACED', $4)",
            intent_id,
            uuid.uuid4(),
            strategy,
            datetime.now(UTC) - timedelta(seconds=5),
        )
        handled = asyncio.create_task(pipeline.handle([Delivery("1-0", late)]))
        await eventually(lambda: pool.fetchval(WAITING_ON_A_KEY), what="the batch waiting on its key")
        assert not handled.done()
        await holder.execute("COMMIT")
        settled = await handled
    # Its read ran after the lock was granted, so it saw the committed intent: a duplicate.
    status = await pool.fetchval("SELECT status FROM order_intents WHERE signal_id = $1", late.signal_id)
    assert status == "DEDUP_SKIPPED"
    assert len(settled.entries) == 1
    assert await pool.fetchval("SELECT count(*) FROM paper_orders") == 0
    await pipeline.close()


async def test_the_keys_are_locked_in_lock_id_order(pool: asyncpg.Pool) -> None:
    """Every batch takes its keys in one order, so two batches never wait on each other in a
    cycle: held up at one key, a batch holds exactly the keys below it, and none above."""
    signals = [signal(strategy=f"order:{uuid.uuid4().hex[:8]}") for _ in range(40)]
    by_id = {(await _lock_ids(pool, [dedup_key(s)]))[0]: s for s in signals}
    ids = sorted(by_id)
    assert len(ids) == len(signals)  # 40 distinct lock ids
    middle = ids[len(ids) // 2]
    locks = key_locks.KeyLocks(pool)
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def batch() -> None:
        async with locks.connection() as conn:
            started.set_result(conn.get_server_pid())
            await _read(conn, signals)

    async with _holding_key(pool, dedup_key(by_id[middle])) as holder:
        task = asyncio.create_task(batch())
        pid = await started
        await eventually(lambda: pool.fetchval(WAITING_ON_A_KEY), what="the batch waiting on the middle key")
        assert await _held_by(pool, pid) == ids[: len(ids) // 2]
        await holder.execute("COMMIT")
        await asyncio.wait_for(task, 10)
    await locks.wait_released()


async def test_a_failed_statement_lets_the_keys_go_before_its_error(pool: asyncpg.Pool) -> None:
    locks = key_locks.KeyLocks(pool)
    with pytest.raises(asyncpg.DivisionByZeroError):
        async with locks.connection() as conn:
            pid = conn.get_server_pid()
            await _read(conn, [signal()])
            await conn.execute("SELECT 1 / 0")
    # Released before the error reached here, on a connection still open for the next batch.
    assert await _held_by(pool, pid) == []
    assert await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid) == 1


async def test_a_batch_cancelled_while_it_waits_closes_its_connection_and_takes_no_key(
    pool: asyncpg.Pool,
) -> None:
    locks = key_locks.KeyLocks(pool)
    waiting = signal()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def batch() -> None:
        async with locks.connection() as conn:
            started.set_result(conn.get_server_pid())
            await _read(conn, [waiting])

    async with _holding_key(pool, dedup_key(waiting)) as holder:
        task = asyncio.create_task(batch())
        pid = await started
        await eventually(lambda: pool.fetchval(WAITING_ON_A_KEY), what="the batch waiting on its key")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await holder.execute("COMMIT")
    # Its session is gone, and with it anything it held or was about to be granted.
    await eventually(
        lambda: pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid),
        until=lambda n: n == 0,
        what="the cancelled batch's session ending",
    )
    async with locks.connection() as conn:
        await asyncio.wait_for(_read(conn, [waiting]), 10)
    await locks.wait_released()


async def test_the_function_reads_on_cached_index_plans(pool: asyncpg.Pool) -> None:
    locks = key_locks.KeyLocks(pool)
    async with locks.connection() as conn:
        await _read(conn, [signal()])
        config = await conn.fetchval(
            "SELECT proconfig FROM pg_proc WHERE proname = 'intentflow_lock_and_read_batch'"
            " AND pronamespace = pg_my_temp_schema()"
        )
        # The connection itself goes on planning every statement afresh.
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
    assert sorted(config) == ["enable_seqscan=off", "plan_cache_mode=force_generic_plan"]
    await locks.wait_released()


async def test_commit_and_release_commits_the_statement_and_lets_the_keys_go_in_one_call(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS key_locks_probe (n int PRIMARY KEY, at timestamptz)")
    signals = [signal("BTC_USDT", "BUY"), signal("ETH_USDT", "SELL")]
    locks = key_locks.KeyLocks(pool)
    statements: list[str] = []

    def logged(record: Any) -> None:
        statements.append(record.query)

    async with locks.connection() as conn:
        pid = conn.get_server_pid()
        conn.add_query_logger(logged)
        for n in (1, 2):  # the second call on the connection finds its procedure defined
            await _read(conn, signals)
            assert await _held_by(pool, pid) != []
            await locks.commit_and_release(
                conn, "INSERT INTO key_locks_probe (n, at) VALUES ($1, $2)", n, datetime.now(UTC)
            )
            # Committed (another session sees it), and nothing held, before the block ends.
            assert not conn.is_in_transaction()
            assert await _held_by(pool, pid) == []
            assert await pool.fetchval("SELECT count(*) FROM key_locks_probe WHERE n = $1", n) == 1
        conn.remove_query_logger(logged)
    # Back in the pool at once: no release was left to run.
    assert not locks._releasing
    # The procedure is defined once, before the first CALL, which therefore finds it.
    assert sum(q.startswith("CALL ") for q in statements) == 2
    assert sum(q.startswith("CREATE OR REPLACE PROCEDURE") for q in statements) == 1
    assert not any("pg_advisory_unlock_all" in q for q in statements if not q.startswith("CREATE"))


async def test_commit_and_release_of_a_failing_statement_commits_nothing_and_lets_the_keys_go(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS key_locks_probe (n int PRIMARY KEY, at timestamptz)")
    await pool.execute("INSERT INTO key_locks_probe (n) VALUES (7) ON CONFLICT DO NOTHING")
    locks = key_locks.KeyLocks(pool)
    insert_two = "INSERT INTO key_locks_probe (n) SELECT unnest($1::int[])"
    with pytest.raises(asyncpg.UniqueViolationError):
        async with locks.connection() as conn:
            pid = conn.get_server_pid()
            await _read(conn, [signal()])
            await locks.commit_and_release(conn, insert_two, [8, 7])
    assert await pool.fetchval("SELECT count(*) FROM key_locks_probe WHERE n = 8") == 0
    assert await _held_by(pool, pid) == []
    assert not locks._released


async def test_commit_and_release_refuses_a_statement_holding_its_body_quote(pool: asyncpg.Pool) -> None:
    locks = key_locks.KeyLocks(pool)
    async with pool.acquire() as conn:
        with pytest.raises(ValueError, match="cannot hold"):
            await locks.commit_and_release(conn, "SELECT '$intentflow_commit$'")


async def test_a_new_connections_first_batch_fails_no_statement(pool: asyncpg.Pool) -> None:
    """Nothing for PostgreSQL to log as an ERROR: the routines are there before their calls."""
    await pool.execute("CREATE TABLE IF NOT EXISTS key_locks_probe (n int PRIMARY KEY, at timestamptz)")
    locks = key_locks.KeyLocks(pool)
    failed: list[str] = []

    def logged(record: Any) -> None:
        if record.exception is not None:
            failed.append(f"{record.query}: {record.exception!r}")

    for n in (11, 12):  # the pool's sessions are new: they have never seen the routines
        async with locks.connection() as conn:
            conn.add_query_logger(logged)
            await _read(conn, [signal()])
            await locks.commit_and_release(conn, "INSERT INTO key_locks_probe (n) VALUES ($1)", n)
            conn.remove_query_logger(logged)
    assert failed == []
    assert await pool.fetchval("SELECT count(*) FROM key_locks_probe WHERE n IN (11, 12)") == 2


async def test_a_session_that_lost_its_routines_defines_them_again(pool: asyncpg.Pool) -> None:
    """As a new session that took a closed one's process id would: the call fails, took no
    lock, and the routine is defined and called again."""
    await pool.execute("CREATE TABLE IF NOT EXISTS key_locks_probe (n int PRIMARY KEY, at timestamptz)")
    locks = key_locks.KeyLocks(pool)
    insert = "INSERT INTO key_locks_probe (n) VALUES ($1)"
    async with locks.connection() as conn:
        pid = conn.get_server_pid()
        await _read(conn, [signal()])
        await locks.commit_and_release(conn, insert, 21)
    async with locks.connection() as conn:
        assert conn.get_server_pid() == pid  # the pool's one idle connection, as the test needs
        await conn.execute("DISCARD TEMP")  # the function and the procedure are gone
        await _read(conn, [signal()])
        assert await _held_by(pool, pid) != []
        await locks.commit_and_release(conn, insert, 22)
        assert await _held_by(pool, pid) == []
    assert await pool.fetchval("SELECT count(*) FROM key_locks_probe WHERE n IN (21, 22)") == 2
