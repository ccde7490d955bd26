"""ThrottleStore on the real Redis: state survives a new client, racing monitors pass once, and a
pass is recorded only with the signal it sent."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.signal_monitor.throttle import (
    Candidate,
    GateCode,
    GateDecision,
    GateRules,
    ThrottleState,
    ThrottleStore,
)
from shared.events import Side, SignalEmitted
from shared.publishing import ThrottleSwap, publish_signal, seen_key
from shared.redis import create_redis

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULES = GateRules(cooldown_seconds=300, min_price_change_pct=Decimal("0.5"))


def candidate(price: str = "100", side: Side = Side.BUY) -> Candidate:
    return Candidate("BTC_USDT", side, "rsi_ema:default", Decimal(price))


def signal_of(c: Candidate) -> SignalEmitted:
    return SignalEmitted(
        signal_id=uuid.uuid4(), symbol=c.symbol, side=c.side, price=c.price, strategy=c.strategy
    )


async def try_pass(
    store: ThrottleStore, redis: Redis, prefix: str, c: Candidate, rules: GateRules, now: datetime
) -> GateDecision:
    """The gates for a new signal of `c`, sent to `{prefix}signals` when they pass."""
    signal = signal_of(c)

    async def send(swap: ThrottleSwap) -> tuple[bool, str] | None:
        return await publish_signal(redis, f"{prefix}signals", signal, swap, prefix=prefix)

    decision, sent = await store.pass_and_send(c, rules, now, send)
    assert (sent is not None) == decision.allowed
    return decision


async def test_get_put_round_trip_under_the_prefix(redis: Redis, prefix: str) -> None:
    store = ThrottleStore(redis, prefix)
    assert await store.get("BTC_USDT|BUY|x") is None
    state = ThrottleState(Decimal("43210.5"), T0)
    await store.put("BTC_USDT|BUY|x", state)
    assert await store.get("BTC_USDT|BUY|x") == state
    assert await redis.exists(f"{prefix}throttle:BTC_USDT|BUY|x") == 1


async def test_cooldown_holds_across_a_restart(redis: Redis, redis_url: str, prefix: str) -> None:
    first = ThrottleStore(redis, prefix)
    assert (await try_pass(first, redis, prefix, candidate("100"), RULES, T0)).allowed
    # A new process: a fresh client (this one without decoding) over the same Redis and prefix.
    fresh = Redis.from_url(redis_url)
    try:
        restarted = ThrottleStore(fresh, prefix)
        inside = await try_pass(restarted, fresh, prefix, candidate("200"), RULES, T0 + timedelta(seconds=60))
        assert inside.code is GateCode.COOLDOWN
        small = await try_pass(
            restarted, fresh, prefix, candidate("100.1"), RULES, T0 + timedelta(seconds=600)
        )
        assert small.code is GateCode.PRICE_CHANGE
        later = await try_pass(restarted, fresh, prefix, candidate("101"), RULES, T0 + timedelta(seconds=600))
        assert later.allowed
        assert await restarted.get(candidate().key) == ThrottleState(
            Decimal("101"), T0 + timedelta(seconds=600)
        )
    finally:
        await fresh.aclose()


async def test_blocked_by_kill_switch_or_alerts_leaves_no_state(redis: Redis, prefix: str) -> None:
    store = ThrottleStore(redis, prefix)
    killed = await try_pass(store, redis, prefix, candidate(), GateRules(kill_switch=True), T0)
    muted = await try_pass(store, redis, prefix, candidate(), GateRules(alert_enabled=False), T0)
    assert (killed.code, muted.code) == (GateCode.KILL_SWITCH, GateCode.ALERTS_DISABLED)
    assert await store.get(candidate().key) is None
    assert await redis.exists(f"{prefix}signals") == 0


async def test_racing_monitors_pass_exactly_once(redis: Redis, redis_url: str, prefix: str) -> None:
    # Eight monitors, each with its own connection; the `redis` fixture cleans the prefix up.
    clients = [create_redis(redis_url) for _ in range(8)]
    try:
        stores = [ThrottleStore(c, prefix) for c in clients]
        for round_no in range(5):
            now = T0 + timedelta(hours=round_no)
            price = str(100 + 10 * round_no)
            decisions = await asyncio.gather(
                *(
                    try_pass(s, c, prefix, candidate(price), RULES, now)
                    for s, c in zip(stores, clients, strict=True)
                    for _ in range(4)
                )
            )
            assert sum(d.allowed for d in decisions) == 1, f"round {round_no}"
            assert {d.code for d in decisions if not d.allowed} == {GateCode.COOLDOWN}
            assert await redis.xlen(f"{prefix}signals") == round_no + 1
    finally:
        for c in clients:
            await c.aclose()


async def test_a_send_redis_refuses_records_no_pass_and_no_mark(redis: Redis, prefix: str) -> None:
    store = ThrottleStore(redis, prefix)
    await redis.set(f"{prefix}signals", "not a stream")  # the append is refused: WRONGTYPE
    signal = signal_of(candidate())
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await store.pass_and_send(
            candidate(),
            RULES,
            T0,
            lambda swap: publish_signal(redis, f"{prefix}signals", signal, swap, prefix=prefix),
        )
    assert await store.get(candidate().key) is None
    assert await redis.exists(seen_key(prefix, str(signal.signal_id))) == 0


async def test_a_swap_from_a_state_the_key_no_longer_holds_sends_nothing(redis: Redis, prefix: str) -> None:
    store = ThrottleStore(redis, prefix)
    key = store.redis_key(candidate().key)
    new = ThrottleState(Decimal(100), T0).to_json()
    signal = signal_of(candidate())
    stream = f"{prefix}signals"
    # Decided on "no state", but another monitor recorded one meanwhile; and the other way round.
    await redis.set(key, "recorded by another monitor")
    assert await publish_signal(redis, stream, signal, ThrottleSwap(key, None, new), prefix=prefix) is None
    stale = ThrottleSwap(key, "what it held before", new)
    assert await publish_signal(redis, stream, signal, stale, prefix=prefix) is None
    assert await redis.get(key) == "recorded by another monitor"
    assert await redis.exists(stream, seen_key(prefix, str(signal.signal_id))) == 0
    # From what the key does hold: sent, and the pass recorded with it.
    held = ThrottleSwap(key, "recorded by another monitor", new)
    new_, entry_id = await publish_signal(redis, stream, signal, held, prefix=prefix) or (False, "")
    assert new_ and await redis.get(key) == new
    assert await redis.get(seen_key(prefix, str(signal.signal_id))) == entry_id
    # The same signal_id again: answered as sent before, whatever the key holds, and left alone.
    again = await publish_signal(redis, stream, signal, ThrottleSwap(key, None, "x"), prefix=prefix)
    assert again == (False, entry_id)
    assert await redis.get(key) == new and await redis.xlen(stream) == 1
