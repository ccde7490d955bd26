"""The notifier through real aiogram over real HTTP to the sandbox, on real Redis and PostgreSQL."""

from __future__ import annotations

import json
import logging
import uuid
from functools import partial
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from services.notifier.app import build_app
from services.orchestrator.decide import intent_id_for
from services.orchestrator.exchanges.base import client_order_id
from shared.events import OrderDecided, SignalEmitted
from shared.streams import StreamNames, encode_entry
from tests.support.eventually import eventually
from tests.support.pipeline import group_drained, running, signal
from tests.support.sandbox import inject, new_token, received

CHAT = "4242"


@pytest.fixture
def token() -> str:
    return new_token()


@pytest.fixture
def notifier_settings(make_settings, sandbox, token):
    def build(**extra: Any):
        return make_settings(
            TELEGRAM_BOT_TOKEN=token, TELEGRAM_CHAT_ID=CHAT, TELEGRAM_API_URL=sandbox.url, **extra
        )

    return build


def decided(
    sig: SignalEmitted, status: str, decision: str, reason: str, message: str = "because"
) -> OrderDecided:
    return OrderDecided.model_validate(
        {
            "signal_id": sig.signal_id,
            "intent_id": intent_id_for(sig.signal_id),
            "symbol": sig.symbol,
            "side": sig.side,
            "status": status,
            "decision_type": decision,
            "reason_code": reason,
            "reason_message": message,
        }
    )


async def plant_intent(pool: asyncpg.Pool, event: OrderDecided) -> None:
    """Record the intent the orchestrator would have committed before publishing its decision."""
    await pool.execute(
        "INSERT INTO order_intents (id, signal_id, idempotency_key, symbol, side, strategy, price, status,"
        " decision_type, reason_code, reason_message, emitted_at, decided_at)"
        " VALUES ($1, $2, $3, $4, $5, 'test', 1, $6, $7, $8, $9, now(), now())",
        event.intent_id,
        event.signal_id,
        client_order_id(event.intent_id),
        event.symbol,
        event.side.value,
        event.status.value,
        event.decision_type.value,
        event.reason_code.value,
        event.reason_message,
    )


async def publish(redis: Redis, stream: str, event: Any) -> None:
    fields: Any = encode_entry(event)
    await redis.xadd(stream, fields)


async def rows(pool: asyncpg.Pool, signal_id: uuid.UUID) -> list[Any]:
    return await pool.fetch(
        "SELECT * FROM telegram_messages WHERE signal_id = $1 ORDER BY kind DESC", signal_id
    )


def lines_about(messages: list[dict[str, Any]], sig: SignalEmitted) -> int:
    short = str(sig.signal_id)[:8]
    return sum(line.count(short) for m in messages for line in m["text"].splitlines())


@pytest.mark.parametrize("decision_first", [False, True])
async def test_signal_and_failed_decision_make_two_messages_with_traces(
    notifier_settings,
    pool,
    redis,
    names: StreamNames,
    sandbox,
    decision_first,
) -> None:
    sig = signal(side="SELL", symbol="ETH_USDT")
    event = decided(sig, "ORDER_FAILED", "FAILED", "INSUFFICIENT_FUNDS", "selling 0.03 ETH but only 0 held")
    await plant_intent(pool, event)
    async with running(build_app(notifier_settings())):
        first: tuple[str, Any] = (names.order_decisions, event)
        second: tuple[str, Any] = (names.signals, sig)
        if not decision_first:
            first, second = second, first
        await publish(redis, *first)
        await publish(redis, *second)
        found = await eventually(lambda: rows(pool, sig.signal_id), until=lambda r: len(r) == 2)
        await eventually(
            lambda: rows(pool, sig.signal_id), until=lambda r: all(x["decision_type"] == "FAILED" for x in r)
        )
    found = await rows(pool, sig.signal_id)
    by_kind = {r["kind"]: r for r in found}
    assert set(by_kind) == {"SIGNAL", "ORDER_FAILED"}
    signal_row, failed_row = by_kind["SIGNAL"], by_kind["ORDER_FAILED"]
    assert "SELL SIGNAL" in signal_row["message"] and "ETH_USDT" in signal_row["message"]
    assert "ORDER FAILED" in failed_row["message"]
    assert "INSUFFICIENT_FUNDS" in failed_row["message"] and "SELL" in failed_row["message"]
    for row in found:
        assert row["blocked"] is False and row["telegram_message_id"] is not None
        assert (row["decision_type"], row["reason_code"]) == ("FAILED", "INSUFFICIENT_FUNDS")
        assert row["reason_message"] == "selling 0.03 ETH but only 0 held"
        assert row["chat_id"] == CHAT
    texts = [m["text"] for m in await received(sandbox.url)]
    assert sum("SELL SIGNAL" in t for t in texts) == 1 and sum("ORDER FAILED" in t for t in texts) == 1


async def test_a_placed_decision_is_traced_and_sends_no_failure_message(
    notifier_settings,
    pool,
    redis,
    names,
    sandbox,
) -> None:
    sig = signal()
    event = decided(sig, "ORDER_PLACED", "EXECUTED", "ORDER_PLACED", "order placed (paper-1)")
    async with running(build_app(notifier_settings())):
        await publish(redis, names.signals, sig)
        await eventually(lambda: rows(pool, sig.signal_id))
        await plant_intent(pool, event)
        await publish(redis, names.order_decisions, event)
        await eventually(
            lambda: rows(pool, sig.signal_id), until=lambda r: r[0]["reason_code"] == "ORDER_PLACED"
        )
    assert len(await rows(pool, sig.signal_id)) == 1
    assert [("BUY SIGNAL" in m["text"]) for m in await received(sandbox.url)] == [True]


async def test_faults_lose_nothing_and_send_nothing_twice(
    notifier_settings, pool, redis, names, sandbox
) -> None:
    await inject(sandbox.url, "429", 5, retry_after=1)
    await inject(sandbox.url, "500", 2)
    await inject(sandbox.url, "502", 1)
    sigs = [signal(price=str(100 + i)) for i in range(40)]
    async with running(build_app(notifier_settings(CONSUMER_BATCH_SIZE=4))):
        for sig in sigs:
            await publish(redis, names.signals, sig)

        async def count() -> int:
            return await pool.fetchval("SELECT count(*) FROM telegram_messages WHERE kind = 'SIGNAL'")

        await eventually(count, until=lambda n: n == 40, timeout=60, what="40 recorded signal messages")
    messages = await received(sandbox.url)
    assert all(lines_about(messages, s) == 1 for s in sigs)
    assert sum(t["text"].count("BUY SIGNAL") for t in messages) == 40
    stats_body = await eventually(lambda: _stats(sandbox.url))
    assert stats_body["faults"] == {"429": 5, "500": 2, "502": 1}


async def _stats(url: str) -> dict[str, Any]:
    from tests.support.sandbox import stats

    return await stats(url)


async def test_a_blocked_chat_is_recorded_undelivered_and_others_still_flow(
    notifier_settings,
    pool,
    redis,
    names,
    sandbox,
) -> None:
    await inject(sandbox.url, "403", 1)
    blocked_sig, later = signal(), signal()
    async with running(build_app(notifier_settings())):
        await publish(redis, names.signals, blocked_sig)
        await eventually(lambda: rows(pool, blocked_sig.signal_id))
        await publish(redis, names.signals, later)
        await eventually(lambda: rows(pool, later.signal_id))
    (row,) = await rows(pool, blocked_sig.signal_id)
    assert row["blocked"] is True and row["telegram_message_id"] is None
    context = (
        row["context_json"] if isinstance(row["context_json"], dict) else json.loads(row["context_json"])
    )
    assert "blocked" in context["error"]
    (ok,) = await rows(pool, later.signal_id)
    assert ok["blocked"] is False
    assert [lines_about(await received(sandbox.url), s) for s in (blocked_sig, later)] == [0, 1]


async def test_a_redelivered_signal_is_not_sent_again(notifier_settings, pool, redis, names, sandbox) -> None:
    sig = signal()
    async with running(build_app(notifier_settings())):
        await publish(redis, names.signals, sig)
        await eventually(lambda: rows(pool, sig.signal_id))
        await publish(redis, names.signals, sig)
        await publish(redis, names.signals, sig)
        await eventually(lambda: group_drained(redis, names.signals, "notifier"))
    assert lines_about(await received(sandbox.url), sig) == 1


async def test_the_token_never_reaches_a_log_line(
    notifier_settings, pool, redis, names, sandbox, token, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    await inject(sandbox.url, "500", 1)
    await inject(sandbox.url, "403", 1)
    sigs = [signal(), signal()]
    async with running(build_app(notifier_settings())):
        for sig in sigs:
            await publish(redis, names.signals, sig)
        for sig in sigs:
            await eventually(partial(rows, pool, sig.signal_id))
    assert caplog.records
    assert token not in caplog.text
    assert token.split(":")[1] not in caplog.text
