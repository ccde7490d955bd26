"""Pure order rules: dedup window, trading-mode gate, brake, status to decision."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.orchestrator.decide import (
    INTENT_NAMESPACE,
    dedup_key,
    failed,
    intent_id_for,
    intent_ids_for,
    placed,
    plan_signals,
)
from services.orchestrator.exchanges.base import OrderRequest, OrderResult, client_order_id
from services.orchestrator.exchanges.paper import Fill, fill, split_symbol
from shared.events import FailureClass, IntentStatus, Side, SignalEmitted
from shared.settings import TradingMode

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def sig(seconds: float, side: str = "BUY", strategy: str = "s:1", symbol: str = "BTC_USDT") -> SignalEmitted:
    return SignalEmitted.model_validate(
        {
            "symbol": symbol,
            "side": side,
            "price": "100",
            "strategy": strategy,
            "emitted_at": T0 + timedelta(seconds=seconds),
        }
    )


def statuses(plans) -> list[str | None]:
    return [p.decision.status.value if p.decision else None for p in plans]


def test_first_of_a_key_is_placed_and_later_ones_inside_the_window_skipped() -> None:
    plans = plan_signals([sig(30), sig(0), sig(59.9), sig(60)], [], window_s=60, mode=TradingMode.PAPER)
    assert [p.signal.emitted_at - T0 for p in plans] == [timedelta(seconds=s) for s in (0, 30, 59.9, 60)]
    assert statuses(plans) == [None, "DEDUP_SKIPPED", "DEDUP_SKIPPED", None]


def test_an_earlier_signal_processed_late_is_still_a_duplicate_of_a_recorded_one() -> None:
    later = sig(20)
    plans = plan_signals(
        [sig(0)], [(dedup_key(later), later.emitted_at)], window_s=60, mode=TradingMode.PAPER
    )
    assert statuses(plans) == ["DEDUP_SKIPPED"]
    assert "DEDUP_WINDOW_SECONDS=60" in plans[0].decision.reason_message  # type: ignore[union-attr]


def test_other_side_strategy_or_symbol_is_not_a_duplicate() -> None:
    plans = plan_signals(
        [sig(0), sig(1, side="SELL"), sig(2, strategy="s:2"), sig(3, symbol="ETH_USDT")],
        [],
        window_s=60,
        mode=TradingMode.PAPER,
    )
    assert statuses(plans) == [None, None, None, None]


def test_a_zero_window_never_dedups() -> None:
    assert statuses(plan_signals([sig(0), sig(0)], [], window_s=0, mode=TradingMode.PAPER)) == [None, None]


def test_mode_off_blocks_non_duplicates_only() -> None:
    plans = plan_signals([sig(0), sig(1)], [], window_s=60, mode=TradingMode.OFF)
    assert statuses(plans) == ["BLOCKED_LIVE_TRADING", "DEDUP_SKIPPED"]
    assert plans[0].decision.reason_code.value == "ORDER_BLOCKED_LIVE_TRADING"  # type: ignore[union-attr]


def test_the_brake_blocks_with_its_reason() -> None:
    plans = plan_signals([sig(0)], [], window_s=60, mode=TradingMode.PAPER, brake_reason="the brake is on")
    assert statuses(plans) == ["BLOCKED_LIVE_TRADING"]
    assert plans[0].decision.reason_message == "the brake is on"  # type: ignore[union-attr]


def test_intent_and_client_order_ids_derive_from_the_signal() -> None:
    signal_id = uuid.uuid4()
    assert intent_id_for(signal_id) == intent_id_for(signal_id)
    assert intent_id_for(signal_id) != intent_id_for(uuid.uuid4())
    coid = client_order_id(intent_id_for(signal_id))
    assert coid == f"if-{intent_id_for(signal_id).hex}" and len(coid) <= 36


def test_intent_id_is_the_uuid5_of_the_signal_id() -> None:
    # Ids recorded by earlier releases were uuid.uuid5(INTENT_NAMESPACE, str(signal_id)).
    signal_ids = [uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1), *(uuid.uuid4() for _ in range(2000))]
    for signal_id in signal_ids:
        assert intent_id_for(signal_id) == uuid.uuid5(INTENT_NAMESPACE, str(signal_id))
    assert intent_ids_for(signal_ids) == [uuid.uuid5(INTENT_NAMESPACE, str(s)) for s in signal_ids]
    assert intent_ids_for([]) == []


@pytest.mark.parametrize("failure", list(FailureClass))
def test_each_failure_class_is_its_reason_code(failure: FailureClass) -> None:
    decision = failed(failure, "why")
    assert (decision.status, decision.decision_type.value, decision.reason_code.value) == (
        IntentStatus.ORDER_FAILED,
        "FAILED",
        failure.value,
    )
    assert placed("x1").reason_code.value == "ORDER_PLACED"


@pytest.mark.parametrize(
    ("symbol", "parts"),
    [
        ("BTC_USDT", ("BTC", "USDT")),
        ("ETH/BTC", ("ETH", "BTC")),
        ("SOL-EUR", ("SOL", "EUR")),
        ("BTCUSDT", ("BTC", "USDT")),
    ],
)
def test_split_symbol(symbol: str, parts: tuple[str, str]) -> None:
    assert split_symbol(symbol) == parts


def order(side: Side, symbol: str = "BTC_USDT", price: str = "50000", notional: str = "100") -> OrderRequest:
    return OrderRequest(uuid.uuid4(), uuid.uuid4(), symbol, side, Decimal(price), Decimal(notional))


def test_paper_buy_fills_at_the_signal_price() -> None:
    result = fill(order(Side.BUY), {"USDT": Decimal(1000)}, frozenset())
    assert result == Fill("BTC", "USDT", Decimal("0.002"), Decimal("100.000"))


def test_paper_buy_without_enough_quote_and_sell_without_base_fail_insufficient_funds() -> None:
    for side, balances in ((Side.BUY, {"USDT": Decimal(99)}), (Side.SELL, {"USDT": Decimal(10**6)})):
        result = fill(order(side), balances, frozenset())
        assert isinstance(result, OrderResult) and result.failure is FailureClass.INSUFFICIENT_FUNDS
        assert "BTC" in result.message


def test_paper_reject_symbols_and_dust_fail_invalid_order() -> None:
    rejected = fill(order(Side.BUY, symbol="DOGE_USDT"), {"USDT": Decimal(1000)}, frozenset({"DOGE_USDT"}))
    dust = fill(
        order(Side.BUY, price="1000000000000", notional="0.001"), {"USDT": Decimal(1000)}, frozenset()
    )
    for result in (rejected, dust):
        assert isinstance(result, OrderResult) and result.failure is FailureClass.INVALID_ORDER
