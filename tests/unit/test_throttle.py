"""Gates: kill switch, per-symbol alerts, cooldown and minimum price change per throttle key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.signal_monitor.throttle import (
    Candidate,
    GateCode,
    GateRules,
    MemoryThrottleStore,
    ThrottleState,
    decide,
    next_state,
)
from shared.events import Side, SignalEmitted

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
BUY = Candidate("BTC_USDT", Side.BUY, "rsi_ema:default", Decimal("100"))
RULES = GateRules(cooldown_seconds=300, min_price_change_pct=Decimal("1"))


def at(seconds: float, price: str = "100") -> tuple[Candidate, datetime]:
    return (
        Candidate(BUY.symbol, BUY.side, BUY.strategy, Decimal(price)),
        T0 + timedelta(seconds=seconds),
    )


def test_first_signal_of_a_key_passes() -> None:
    decision = decide(None, BUY, RULES, T0)
    assert decision.allowed and decision.code is GateCode.PASSED


def test_kill_switch_blocks_everything_even_a_first_signal() -> None:
    decision = decide(None, BUY, GateRules(kill_switch=True), T0)
    assert not decision.allowed and decision.code is GateCode.KILL_SWITCH
    assert "kill switch" in decision.reason


def test_alerts_disabled_for_the_symbol_block_it() -> None:
    decision = decide(None, BUY, GateRules(alert_enabled=False), T0)
    assert not decision.allowed and decision.code is GateCode.ALERTS_DISABLED
    assert "BTC_USDT" in decision.reason


@pytest.mark.parametrize(
    ("seconds", "allowed"), [(0, False), (1, False), (299.9, False), (300, True), (3600, True)]
)
def test_cooldown_counts_from_the_last_passed_signal(seconds: float, allowed: bool) -> None:
    state = ThrottleState(Decimal("100"), T0)
    candidate, now = at(seconds, "150")
    decision = decide(state, candidate, RULES, now)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.code is GateCode.COOLDOWN and "need 300s" in decision.reason


def test_a_clock_before_the_last_signal_is_inside_the_cooldown() -> None:
    state = ThrottleState(Decimal("100"), T0)
    candidate, now = at(-3600, "150")
    assert decide(state, candidate, RULES, now).code is GateCode.COOLDOWN
    assert decide(state, candidate, GateRules(), now).allowed  # no cooldown configured


@pytest.mark.parametrize(
    ("price", "allowed"),
    [("100", False), ("100.99", False), ("99.01", False), ("101", True), ("99", True), ("80", True)],
)
def test_minimum_price_change_in_either_direction(price: str, allowed: bool) -> None:
    state = ThrottleState(Decimal("100"), T0)
    candidate, now = at(600, price)
    decision = decide(state, candidate, RULES, now)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.code is GateCode.PRICE_CHANGE and "need 1%" in decision.reason


def test_state_round_trips_through_json_and_bytes() -> None:
    state = ThrottleState(Decimal("43210.123456789"), T0 + timedelta(microseconds=5))
    assert ThrottleState.from_json(state.to_json()) == state
    assert ThrottleState.from_json(state.to_json().encode()) == state
    with pytest.raises(ValueError, match="timezone"):
        ThrottleState.from_json('{"price": "1", "at": "2026-01-01T00:00:00"}')
    for bad in ("", "{}", '{"price": "x", "at": "2026-01-01T00:00:00Z"}', "[1]"):
        with pytest.raises(ValueError, match="unreadable throttle state"):
            ThrottleState.from_json(bad)


def test_candidate_key_separates_symbol_side_and_strategy() -> None:
    keys = {
        Candidate("BTC_USDT", Side.BUY, "a", Decimal(1)).key,
        Candidate("BTC_USDT", Side.SELL, "a", Decimal(1)).key,
        Candidate("BTC_USDT", Side.BUY, "b", Decimal(1)).key,
        Candidate("ETH_USDT", Side.BUY, "a", Decimal(1)).key,
    }
    assert len(keys) == 4


async def test_memory_store_records_only_passed_signals_per_key() -> None:
    store = MemoryThrottleStore()
    assert (await store.try_pass(BUY, RULES, T0)).allowed
    blocked, when = at(60, "200")
    assert (await store.try_pass(blocked, RULES, when)).code is GateCode.COOLDOWN
    assert await store.get(BUY.key) == ThrottleState(Decimal("100"), T0)  # unchanged by a block
    sell = Candidate(BUY.symbol, Side.SELL, BUY.strategy, Decimal("100"))
    assert (await store.try_pass(sell, RULES, when)).allowed  # another key, its own throttle
    later, when = at(301, "101")
    assert (await store.try_pass(later, RULES, when)).allowed
    assert await store.get(BUY.key) == next_state(later, when)


@given(
    last_price=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100000"), places=2),
    price=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100000"), places=2),
    elapsed=st.integers(min_value=-1000, max_value=1000),
    cooldown=st.integers(min_value=0, max_value=600),
    min_pct=st.decimals(min_value=Decimal(0), max_value=Decimal(5), places=2),
)
def test_decide_allows_exactly_when_cooldown_and_change_are_both_met(
    last_price: Decimal, price: Decimal, elapsed: int, cooldown: int, min_pct: Decimal
) -> None:
    state = ThrottleState(last_price, T0)
    candidate = Candidate("BTC_USDT", Side.BUY, "s", price)
    rules = GateRules(cooldown_seconds=cooldown, min_price_change_pct=min_pct)
    cooled = cooldown == 0 or elapsed >= cooldown
    moved = abs(price - last_price) * 100 >= min_pct * last_price
    decision = decide(state, candidate, rules, T0 + timedelta(seconds=elapsed))
    assert decision.allowed is (cooled and moved)


def test_a_signal_becomes_its_candidate() -> None:
    signal = SignalEmitted(symbol="ETH_USDT", side=Side.SELL, price="2300.5", strategy="tv")
    assert Candidate.of(signal) == Candidate("ETH_USDT", Side.SELL, "tv", Decimal("2300.5"))
