"""Each mapped exchange error, through ccxt to the stand-in, ends in its failure class and a message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from services.notifier.app import build_app as build_notifier
from services.orchestrator.app import build_app as build_orchestrator
from tests.support.eventually import eventually
from tests.support.exchange_standin import ExchangeStandin
from tests.support.pipeline import running, signal, xadd
from tests.support.sandbox import new_token, received


@pytest.fixture
async def standin() -> AsyncIterator[ExchangeStandin]:
    server = ExchangeStandin(balances={"USDT": Decimal("10000"), "BTC": Decimal("1")}, api_key="k-1234")
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("insufficient", "INSUFFICIENT_FUNDS"),
        ("invalid", "INVALID_ORDER"),
        ("429", "RATE_LIMITED"),
        ("418", "RATE_LIMITED"),
        ("maintenance", "EXCHANGE_UNAVAILABLE"),
        ("auth", "UNKNOWN"),
    ],
)
async def test_exchange_errors_end_in_their_failure_class_and_a_failure_message(
    make_settings,
    pool,
    redis,
    names,
    standin,
    sandbox,
    fault,
    reason,
) -> None:
    settings = make_settings(
        TRADING_MODE="live",
        EXCHANGE="binance",
        EXCHANGE_API_KEY="k-1234",
        EXCHANGE_SECRET="s-5678",
        EXCHANGE_API_URL=standin.url,
        TELEGRAM_BOT_TOKEN=new_token(),
        TELEGRAM_CHAT_ID="77",
        TELEGRAM_API_URL=sandbox.url,
    )
    sig = signal(symbol="BTC_USDT", price="50000")
    standin.inject(fault)
    async with running(build_orchestrator(settings)), running(build_notifier(settings)):
        await xadd(redis, names.signals, sig)
        row = await eventually(
            lambda: pool.fetchrow("SELECT * FROM order_intents WHERE signal_id = $1", sig.signal_id),
            until=lambda r: r is not None and r["status"] != "PENDING",
            timeout=40,
        )
        failure_rows = await eventually(
            lambda: pool.fetch(
                "SELECT * FROM telegram_messages WHERE signal_id = $1 AND kind = 'ORDER_FAILED'",
                sig.signal_id,
            ),
            timeout=30,
        )
    assert (row["status"], row["decision_type"], row["reason_code"]) == ("ORDER_FAILED", "FAILED", reason)
    assert row["error_message"]
    assert standin.orders == []
    (message,) = failure_rows
    assert "ORDER FAILED" in message["message"] and reason in message["message"]
    assert "BTC_USDT" in message["message"] and "BUY" in message["message"]
    assert any("ORDER FAILED" in m["text"] for m in await received(sandbox.url))
