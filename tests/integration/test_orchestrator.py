"""The orchestrator on real Redis and PostgreSQL: one intent per signal, each decision, dead-letter."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from services.orchestrator.app import build_app
from shared.consumer import ensure_group
from shared.db import SchemaOutOfDate
from shared.streams import GROUP_ORCHESTRATOR, StreamNames
from tests.support.eventually import eventually
from tests.support.pipeline import events, group_drained, running, signal, xadd


async def _intent(pool: asyncpg.Pool, signal_id: uuid.UUID) -> Any:
    return await pool.fetchrow("SELECT * FROM order_intents WHERE signal_id = $1", signal_id)


async def _decided(redis: Redis, names: StreamNames, signal_id: uuid.UUID) -> list[dict[str, Any]]:
    return [e for e in await events(redis, names.order_decisions) if e["signal_id"] == str(signal_id)]


async def _run_one(make_settings, pool, redis, names, sig, **env: Any) -> tuple[Any, list[dict[str, Any]]]:
    app = build_app(make_settings(**env))
    async with running(app):
        await xadd(redis, names.signals, sig)
        row = await eventually(
            lambda: _intent(pool, sig.signal_id),
            until=lambda r: r is not None and r["status"] != "PENDING",
            what="a terminal intent",
        )
        decided = await eventually(lambda: _decided(redis, names, sig.signal_id), what="OrderDecided")
    return row, decided


@pytest.mark.parametrize(
    ("env", "sig_args", "status", "decision", "reason"),
    [
        ({}, {"side": "BUY"}, "ORDER_PLACED", "EXECUTED", "ORDER_PLACED"),
        ({}, {"side": "SELL"}, "ORDER_FAILED", "FAILED", "INSUFFICIENT_FUNDS"),
        (
            {"PAPER_REJECT_SYMBOLS": "DOGE_USDT"},
            {"symbol": "DOGE_USDT"},
            "ORDER_FAILED",
            "FAILED",
            "INVALID_ORDER",
        ),
        ({"PAPER_BALANCES": "USDT=10"}, {"side": "BUY"}, "ORDER_FAILED", "FAILED", "INSUFFICIENT_FUNDS"),
        ({"TRADING_MODE": "off"}, {}, "BLOCKED_LIVE_TRADING", "SKIPPED", "ORDER_BLOCKED_LIVE_TRADING"),
    ],
)
async def test_a_signal_yields_one_intent_with_its_decision_and_one_event(
    make_settings, pool, redis, names, env, sig_args, status, decision, reason
) -> None:
    sig = signal(**sig_args)
    row, decided = await _run_one(make_settings, pool, redis, names, sig, **env)
    assert (row["status"], row["decision_type"], row["reason_code"]) == (status, decision, reason)
    assert row["reason_message"]
    assert len(decided) == 1
    event = decided[0]
    assert (event["status"], event["decision_type"], event["reason_code"]) == (status, decision, reason)
    assert event["intent_id"] == str(row["id"])
    assert event["symbol"] == sig.symbol and event["side"] == sig.side.value
    orders = await pool.fetchval("SELECT count(*) FROM paper_orders")
    assert orders == (1 if status == "ORDER_PLACED" else 0)
    if status == "ORDER_PLACED":
        assert row["exchange_order_id"] and row["quantity"] > 0


async def test_a_duplicate_inside_the_window_is_skipped(make_settings, pool, redis, names) -> None:
    first = signal(strategy="dup:test", ago=10)
    second = signal(strategy="dup:test")
    app = build_app(make_settings())
    async with running(app):
        await xadd(redis, names.signals, first)
        await eventually(lambda: _decided(redis, names, first.signal_id))
        await xadd(redis, names.signals, second)
        await eventually(lambda: _decided(redis, names, second.signal_id))
    row = await _intent(pool, second.signal_id)
    assert (row["status"], row["decision_type"], row["reason_code"]) == (
        "DEDUP_SKIPPED",
        "SKIPPED",
        "DUPLICATE_SIGNAL",
    )
    assert (await _intent(pool, first.signal_id))["status"] == "ORDER_PLACED"


async def test_outside_the_window_or_another_side_is_not_a_duplicate(
    make_settings, pool, redis, names
) -> None:
    old = signal(strategy="dup:window", ago=90)
    new = signal(strategy="dup:window")
    other_side = signal(strategy="dup:window", side="SELL")
    app = build_app(make_settings(PAPER_BALANCES="USDT=10000,BTC=1"))
    async with running(app):
        for sig in (old, new, other_side):
            await xadd(redis, names.signals, sig)
            await eventually(partial(_decided, redis, names, sig.signal_id))
    statuses = [(await _intent(pool, s.signal_id))["status"] for s in (old, new, other_side)]
    assert statuses == ["ORDER_PLACED", "ORDER_PLACED", "ORDER_PLACED"]


async def test_the_same_signal_three_times_makes_one_intent_and_one_order(
    make_settings, pool, redis, names
) -> None:
    sig = signal()
    app = build_app(make_settings())
    async with running(app):
        for _ in range(3):
            await xadd(redis, names.signals, sig)
        await eventually(
            lambda: group_drained(redis, names.signals, GROUP_ORCHESTRATOR),
            what="all three entries acknowledged",
        )
    assert await pool.fetchval("SELECT count(*) FROM order_intents WHERE signal_id = $1", sig.signal_id) == 1
    assert await pool.fetchval("SELECT count(*) FROM paper_orders") == 1


async def test_a_malformed_entry_goes_to_dead_letter_and_the_next_signal_flows(
    make_settings, pool, redis, names
) -> None:
    app = build_app(make_settings())
    good = signal()
    async with running(app):
        bad_id = await redis.xadd(
            names.signals, {"type": "SignalEmitted", "event": '{"symbol": "btc", "side": "HOLD"}'}
        )
        raw_id = await redis.xadd(names.signals, {"hello": "world"})
        await xadd(redis, names.signals, good)
        await eventually(lambda: _decided(redis, names, good.signal_id))
        letters = await eventually(lambda: events(redis, names.dead_letter), until=lambda x: len(x) >= 2)
        pending = await redis.xpending(names.signals, GROUP_ORCHESTRATOR)
    by_entry = {letter["entry_id"]: letter for letter in letters}
    assert set(by_entry) == {bad_id, raw_id}
    assert "symbol" in by_entry[bad_id]["error"] and "side" in by_entry[bad_id]["error"]
    assert by_entry[bad_id]["fields"]["event"].startswith('{"symbol"')
    assert by_entry[bad_id]["group"] == GROUP_ORCHESTRATOR
    assert "event" in by_entry[raw_id]["error"]
    assert pending["pending"] == 0
    assert (await _intent(pool, good.signal_id))["status"] == "ORDER_PLACED"


async def test_the_orchestrator_refuses_an_old_schema(make_settings, admin_db_url, redis, names) -> None:
    from tests.support import servers

    name = f"intentflow_empty_{uuid.uuid4().hex[:8]}"
    url = servers.create_run_database(admin_db_url, name)
    try:
        app = build_app(make_settings(DATABASE_URL=url))
        with pytest.raises(SchemaOutOfDate, match="intentflow migrate"):
            async with running(app):
                pass
    finally:
        servers.drop_database(admin_db_url, name)


async def test_a_consumer_recreates_a_lost_group(make_settings, pool, redis, names) -> None:
    app = build_app(make_settings())
    async with running(app):
        await ensure_group(redis, names.signals, GROUP_ORCHESTRATOR)
        await redis.delete(names.signals)
        sig = signal()
        await xadd(redis, names.signals, sig)
        await eventually(lambda: _decided(redis, names, sig.signal_id), timeout=30)


async def test_each_test_gets_its_own_database(pool) -> None:
    assert await pool.fetchval("SELECT count(*) FROM order_intents") == 0


async def test_the_orchestrator_reads_batches_of_its_own_size(make_settings, pool, redis, names) -> None:
    # A backlog of 12, read 5 at a time (CONSUMER_BATCH_SIZE is the other consumers'): three
    # batches, each decided on one read, whose now() is its intents' decided_at.
    sigs = [signal(strategy=f"size:{uuid.uuid4().hex[:6]}") for _ in range(12)]
    for sig in sigs:
        await xadd(redis, names.signals, sig)
    settings = make_settings(ORCHESTRATOR_BATCH_SIZE=5, CONSUMER_BATCH_SIZE=1, ORCHESTRATOR_IN_FLIGHT=1)
    async with running(build_app(settings)):
        await eventually(
            lambda: pool.fetchval("SELECT count(*) FROM order_intents WHERE decided_at IS NOT NULL"),
            until=lambda n: n == len(sigs),
            what="every signal decided",
        )
    sizes = await pool.fetch(
        "SELECT count(*) AS n FROM order_intents GROUP BY decided_at ORDER BY min(emitted_at)"
    )
    assert [r["n"] for r in sizes] == [5, 5, 2]


async def test_the_orchestrator_opens_a_connection_per_batch_in_flight_at_start(
    make_settings, pool, redis, names
) -> None:
    # Opened before the first backlog arrives (a drain does not pay for connecting), one more
    # for the exchange and the live path's decisions.
    count = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    before = await pool.fetchval(count)
    async with running(build_app(make_settings(ORCHESTRATOR_IN_FLIGHT=6))):
        await eventually(lambda: pool.fetchval(count), until=lambda n: n == before + 7, what="7 connections")
