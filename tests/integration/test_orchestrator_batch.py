"""The batched hot path: one batch of mixed signals gets exactly the right decisions, also when racing."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import asyncpg

from services.orchestrator.decide import intent_id_for
from services.orchestrator.exchanges.base import client_order_id
from services.orchestrator.exchanges.paper import PaperExchange
from services.orchestrator.handlers import OrderPipeline
from shared.consumer import Delivery, Settlement
from shared.events import OrderDecided, SignalEmitted
from shared.settings import TradingSettings
from shared.streams import EVENT_FIELD, StreamNames
from tests.support.pipeline import signal


async def _pipeline(pool: asyncpg.Pool, names: StreamNames, settings: TradingSettings) -> OrderPipeline:
    exchange = PaperExchange(pool, settings.balances, settings.reject_symbols)
    await exchange.start()
    return OrderPipeline(
        pool=pool, exchange=exchange, trading=settings, decisions_stream=names.order_decisions
    )


def _events(settled: Settlement) -> list[dict[str, Any]]:
    """The OrderDecided events a handled batch hands the consumer to publish."""
    return [json.loads(fields[EVENT_FIELD]) for fields in settled.entries]


def _batch(*signals: SignalEmitted) -> list[Delivery[SignalEmitted]]:
    return [Delivery(f"{i + 1}-0", s) for i, s in enumerate(signals)]


async def _statuses(pool: asyncpg.Pool) -> dict[uuid.UUID, tuple[str, str]]:
    rows = await pool.fetch("SELECT signal_id, status, reason_code FROM order_intents")
    return {r["signal_id"]: (r["status"], r["reason_code"]) for r in rows}


async def test_a_mixed_batch_gets_each_decision_once_and_one_order_per_placed_intent(
    make_settings, pool, names
) -> None:
    settings = make_settings(PAPER_BALANCES="USDT=150", PAPER_REJECT_SYMBOLS="DOGE_USDT").trading
    pipeline = await _pipeline(pool, names, settings)
    strategy = f"mix:{uuid.uuid4().hex[:6]}"
    first = signal("BTC_USDT", "BUY", "50000", strategy, ago=3)
    duplicate = signal("BTC_USDT", "BUY", "50100", strategy, ago=2)
    unheld = signal("ETH_USDT", "SELL", "3000", ago=2)
    rejected = signal("DOGE_USDT", "BUY", "0.1", ago=2)
    broke = signal("SOL_USDT", "BUY", "100", ago=1)
    other_side = signal("BTC_USDT", "SELL", "50000", strategy, ago=0)
    batch = _batch(first, duplicate, unheld, rejected, broke, other_side, first)

    settled = await pipeline.handle(batch)

    assert settled.keep == set()
    assert settled.stream == names.order_decisions
    assert await _statuses(pool) == {
        first.signal_id: ("ORDER_PLACED", "ORDER_PLACED"),
        duplicate.signal_id: ("DEDUP_SKIPPED", "DUPLICATE_SIGNAL"),
        unheld.signal_id: ("ORDER_FAILED", "INSUFFICIENT_FUNDS"),
        rejected.signal_id: ("ORDER_FAILED", "INVALID_ORDER"),
        # The first order spent 100 of the 150 USDT: 50 left cannot buy 100 worth.
        broke.signal_id: ("ORDER_FAILED", "INSUFFICIENT_FUNDS"),
        # It sells the BTC the first order bought, in the same batch, in emission order.
        other_side.signal_id: ("ORDER_PLACED", "ORDER_PLACED"),
    }
    decided = _events(settled)
    assert sorted(e["signal_id"] for e in decided) == sorted(
        str(s.signal_id) for s in (first, duplicate, unheld, rejected, broke, other_side)
    )
    assert all(e["decided_at"] and e["reason_code"] for e in decided)
    # Each event carries the decided_at its row has (the batch read's now(), not sent back).
    recorded_at = dict(await pool.fetch("SELECT signal_id::text, decided_at FROM order_intents"))
    assert {e["signal_id"]: OrderDecided.model_validate(e).decided_at for e in decided} == recorded_at
    assert {tuple(fields) for fields in settled.entries} == {("type", "event")}
    assert {fields["type"] for fields in settled.entries} == {"OrderDecided"}
    assert all(OrderDecided.model_validate_json(fields["event"]) for fields in settled.entries)
    orders = await pool.fetch("SELECT client_order_id, side, quantity FROM paper_orders")
    assert sorted(o["side"] for o in orders) == ["BUY", "SELL"]
    placed = await pool.fetch(
        "SELECT idempotency_key, quantity, exchange_order_id FROM order_intents WHERE status = 'ORDER_PLACED'"
    )
    assert {p["idempotency_key"] for p in placed} == {o["client_order_id"] for o in orders}
    assert all(p["exchange_order_id"] and p["quantity"] == Decimal("0.002") for p in placed)
    balances = dict(await pool.fetch("SELECT asset, amount FROM paper_balances"))
    assert balances["USDT"] == Decimal("150")  # bought 0.002 BTC at 50000, sold it at 50000
    assert balances["BTC"] == 0

    # The whole batch delivered again: nothing new is decided, no order is placed twice;
    # the recorded decisions are handed back again (their events may not have gone out).
    again = await pipeline.handle(batch)
    assert again.keep == set()
    assert sorted(e["signal_id"] for e in _events(again)) == sorted(e["signal_id"] for e in decided)
    assert await pool.fetchval("SELECT count(*) FROM paper_orders") == 2
    assert await pool.fetchval("SELECT count(*) FROM order_intents") == 6


async def test_racing_pipelines_keep_one_intent_per_signal_and_the_window_exact(
    make_settings, pool, names
) -> None:
    settings = make_settings(PAPER_BALANCES="USDT=1000000").trading
    pipelines = [await _pipeline(pool, names, settings) for _ in range(4)]
    strategies = [f"race:{uuid.uuid4().hex[:6]}" for _ in range(10)]
    # Ten keys, each signalled 8 times within the window; every pipeline gets every signal.
    signals = [signal("BTC_USDT", "BUY", "50000", s, ago=8 - i) for s in strategies for i in range(8)]
    batches = [_batch(*signals[k::4], *signals[(k + 1) % 4 :: 4]) for k in range(4)]

    settled = await asyncio.gather(*(p.handle(b) for p, b in zip(pipelines, batches, strict=True)))

    assert all(s.keep == set() for s in settled)
    statuses = await _statuses(pool)
    assert set(statuses) == {s.signal_id for s in signals}
    placed = [sid for sid, (status, _) in statuses.items() if status == "ORDER_PLACED"]
    assert len(placed) == len(strategies)
    assert all(status in ("ORDER_PLACED", "DEDUP_SKIPPED") for status, _ in statuses.values())
    rows = await pool.fetch("SELECT strategy FROM order_intents WHERE status = 'ORDER_PLACED'")
    assert sorted(r["strategy"] for r in rows) == sorted(strategies)
    assert await pool.fetchval("SELECT count(*) FROM paper_orders") == len(strategies)
    usdt = await pool.fetchval("SELECT amount FROM paper_balances WHERE asset = 'USDT'")
    assert usdt == Decimal("1000000") - 100 * len(strategies)


async def _race_buys(
    pool: asyncpg.Pool, names: StreamNames, settings: TradingSettings, per_batch: int
) -> None:
    """Eight batches of BTC buys, no dedup key in common, raced on four pipelines."""
    pipelines = [await _pipeline(pool, names, settings) for _ in range(4)]
    batches = [
        _batch(
            *(signal("BTC_USDT", "BUY", "50000", f"race:{uuid.uuid4().hex[:8]}") for _ in range(per_batch))
        )
        for _ in range(8)
    ]
    await asyncio.gather(*(pipelines[i % 4].handle(b) for i, b in enumerate(batches)))


async def test_racing_batches_of_distinct_keys_move_the_balances_exactly(make_settings, pool, names) -> None:
    # No dedup key in common: only the balance rows, taken in asset order by each batch's
    # write, order them.
    await _race_buys(pool, names, make_settings(PAPER_BALANCES="USDT=1000000").trading, per_batch=25)

    statuses = await _statuses(pool)
    assert [s for s, _ in statuses.values()].count("ORDER_PLACED") == 200
    usdt = await pool.fetchval("SELECT amount FROM paper_balances WHERE asset = 'USDT'")
    btc = await pool.fetchval("SELECT amount FROM paper_balances WHERE asset = 'BTC'")
    assert usdt == Decimal("1000000") - 100 * 200
    assert btc == Decimal("0.002") * 200


async def test_racing_batches_that_overspend_fill_only_what_the_balance_holds(
    make_settings, pool, names
) -> None:
    # 1,000 USDT buys ten orders of 100; forty race for them in eight batches on four pipelines.
    await _race_buys(pool, names, make_settings(PAPER_BALANCES="USDT=1000").trading, per_batch=5)

    statuses = [s for s, _ in (await _statuses(pool)).values()]
    assert statuses.count("ORDER_PLACED") == 10
    assert statuses.count("ORDER_FAILED") == 30
    assert await pool.fetchval("SELECT count(*) FROM paper_orders") == 10
    assert await pool.fetchval("SELECT amount FROM paper_balances WHERE asset = 'USDT'") == 0
    assert await pool.fetchval("SELECT amount FROM paper_balances WHERE asset = 'BTC'") == Decimal("0.02")


async def test_a_batch_whose_balance_was_spent_meanwhile_is_decided_again_on_what_is_left(
    make_settings, pool, names
) -> None:
    settings = make_settings(PAPER_BALANCES="USDT=1000").trading
    pipeline = await _pipeline(pool, names, settings)
    batch = _batch(*(signal("BTC_USDT", "BUY", "50000", f"late:{uuid.uuid4().hex[:8]}") for _ in range(3)))
    async with pool.acquire() as other:
        # Another writer spends 900 USDT and holds the row: the batch reads the 1,000 last
        # committed, fills all three against it, and waits on the row to write its fills.
        spend = other.transaction()
        await spend.start()
        await other.execute("UPDATE paper_balances SET amount = amount - 900 WHERE asset = 'USDT'")
        handled = asyncio.create_task(pipeline.handle(batch))
        blocked_pid = other.get_server_pid()
        for _ in range(500):
            waiting = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND $1 = ANY(pg_blocking_pids(pid))",
                blocked_pid,
            )
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting, "the batch never waited on the balance row"
        await spend.commit()
        settled = await handled

    # 100 USDT were left: one order filled, two refused; the balance never went below zero.
    assert sorted(s for s, _ in (await _statuses(pool)).values()) == [
        "ORDER_FAILED",
        "ORDER_FAILED",
        "ORDER_PLACED",
    ]
    assert sorted(e["reason_code"] for e in _events(settled)) == [
        "INSUFFICIENT_FUNDS",
        "INSUFFICIENT_FUNDS",
        "ORDER_PLACED",
    ]
    assert await pool.fetchval("SELECT count(*) FROM paper_orders") == 1
    assert await pool.fetchval("SELECT amount FROM paper_balances WHERE asset = 'USDT'") == 0


async def test_brake_on_blocks_a_batch_without_placing(make_settings, pool, names) -> None:
    settings = make_settings().trading
    pipeline = await _pipeline(pool, names, settings)
    await pool.execute(
        "INSERT INTO control_flags (name, enabled, changed_by) VALUES ('brake', true, 'test@host')"
    )
    sigs = [signal() for _ in range(3)]

    settled = await pipeline.handle(_batch(*sigs))

    statuses = await _statuses(pool)
    assert set(statuses.values()) == {("BLOCKED_LIVE_TRADING", "ORDER_BLOCKED_LIVE_TRADING")}
    assert await pool.fetchval("SELECT count(*) FROM paper_orders") == 0
    messages = [e["reason_message"] for e in _events(settled)]
    assert len(messages) == 3
    assert all("brake is on" in m and "test@host" in m for m in messages)


async def test_a_pending_intent_left_by_a_crash_is_resumed_without_a_second_order(
    make_settings, pool, names
) -> None:
    settings = make_settings().trading
    pipeline = await _pipeline(pool, names, settings)
    sig = signal("BTC_USDT", "BUY", "50000")
    fresh = signal("ETH_USDT", "BUY", "2000")
    intent_id = intent_id_for(sig.signal_id)
    # A run that died after its order filled, before it recorded the outcome.
    await pool.execute(
        "INSERT INTO order_intents (id, signal_id, idempotency_key, symbol, side, strategy, price, status,"
        " emitted_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'PENDING', $8)",
        intent_id,
        sig.signal_id,
        client_order_id(intent_id),
        sig.symbol,
        sig.side.value,
        sig.strategy,
        sig.price,
        sig.emitted_at,
    )
    await pool.execute(
        "INSERT INTO paper_orders (id, client_order_id, symbol, side, price, quantity, quote_amount)"
        " VALUES ('paper-before-crash', $1, 'BTC_USDT', 'BUY', 50000, 0.002, 100)",
        client_order_id(intent_id),
    )

    settled = await pipeline.handle(_batch(sig, fresh))

    assert settled.keep == set()

    row = await pool.fetchrow("SELECT status, exchange_order_id FROM order_intents WHERE id = $1", intent_id)
    assert (row["status"], row["exchange_order_id"]) == ("ORDER_PLACED", "paper-before-crash")
    assert await pool.fetchval("SELECT count(*) FROM paper_orders WHERE symbol = 'BTC_USDT'") == 1
    assert (await _statuses(pool))[fresh.signal_id] == ("ORDER_PLACED", "ORDER_PLACED")
    assert sorted(e["signal_id"] for e in _events(settled)) == sorted(
        [str(sig.signal_id), str(fresh.signal_id)]
    )


async def test_the_batch_read_probes_indexes_on_a_table_never_analyzed(pool: asyncpg.Pool) -> None:
    # A fresh deploy: thousands of intents before autovacuum's first ANALYZE. Flattened into
    # joins, the batch read scanned the whole table twice per batch; fenced, it probes the
    # signal_id and dedup indexes once per signal and key, whatever the planner believes.
    from services.orchestrator.intents import BATCH_STATE_SQL, BatchRead

    await pool.execute("ALTER TABLE order_intents SET (autovacuum_enabled = false)")
    await pool.execute(
        "INSERT INTO order_intents (id, signal_id, idempotency_key, symbol, side, strategy, source,"
        " price, status, emitted_at)"
        " SELECT id, gen_random_uuid(), 'if-' || replace(id::text, '-', ''), 'BTC_USDT', 'BUY', 's' || g,"
        "  'strategy', 50000, 'ORDER_PLACED', now() - g * interval '1 second'"
        " FROM (SELECT g, gen_random_uuid() AS id FROM generate_series(1, 6000) AS g) AS i"
    )
    ids = [r["signal_id"] for r in await pool.fetch("SELECT signal_id FROM order_intents LIMIT 100")]
    keys = [("BTC_USDT", "BUY", f"s{g}") for g in range(1, 101)]
    async with pool.acquire() as conn:
        read = BatchRead(
            ids,
            keys,
            await conn.fetchval("SELECT now() - interval '1 hour'"),
            await conn.fetchval("SELECT now()"),
            0.0,
            ["BTC", "USDT"],
        )
        plan = await conn.fetch("EXPLAIN " + BATCH_STATE_SQL, *read.args())
    text = "\n".join(r[0] for r in plan)
    assert "Seq Scan on order_intents" not in text, text
    assert text.count("Index Scan") + text.count("Index Only Scan") >= 2, text
