"""ThrottleStore on the real Redis: state survives a new client, racing monitors pass once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis.asyncio import Redis

from services.signal_monitor.throttle import (
    Candidate,
    GateCode,
    GateRules,
    ThrottleState,
    ThrottleStore,
)
from shared.events import Side
from shared.redis import create_redis

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULES = GateRules(cooldown_seconds=300, min_price_change_pct=Decimal("0.5"))


def candidate(price: str = "100", side: Side = Side.BUY) -> Candidate:
    return Candidate("BTC_USDT", side, "rsi_ema:default", Decimal(price))


async def test_get_put_round_trip_under_the_prefix(redis: Redis, prefix: str) -> None:
    store = ThrottleStore(redis, prefix)
    assert await store.get("BTC_USDT|BUY|x") is None
    state = ThrottleState(Decimal("43210.5"), T0)
    await store.put("BTC_USDT|BUY|x", state)
    assert await store.get("BTC_USDT|BUY|x") == state
    assert await redis.exists(f"{prefix}throttle:BTC_USDT|BUY|x") == 1


async def test_cooldown_holds_across_a_restart(redis: Redis, redis_url: str, prefix: str) -> None:
    first = ThrottleStore(redis, prefix)
    assert (await first.try_pass(candidate("100"), RULES, T0)).allowed
    # A new process: a fresh client (this one without decoding) over the same Redis and prefix.
    fresh = Redis.from_url(redis_url)
    try:
        restarted = ThrottleStore(fresh, prefix)
        inside = await restarted.try_pass(candidate("200"), RULES, T0 + timedelta(seconds=60))
        assert inside.code is GateCode.COOLDOWN
        small = await restarted.try_pass(candidate("100.1"), RULES, T0 + timedelta(seconds=600))
        assert small.code is GateCode.PRICE_CHANGE
        later = await restarted.try_pass(candidate("101"), RULES, T0 + timedelta(seconds=600))
        assert later.allowed
        assert await restarted.get(candidate().key) == ThrottleState(
            Decimal("101"), T0 + timedelta(seconds=600)
        )
    finally:
        await fresh.aclose()


async def test_blocked_by_kill_switch_or_alerts_leaves_no_state(redis: Redis, prefix: str) -> None:
    store = ThrottleStore(redis, prefix)
    killed = await store.try_pass(candidate(), GateRules(kill_switch=True), T0)
    muted = await store.try_pass(candidate(), GateRules(alert_enabled=False), T0)
    assert (killed.code, muted.code) == (GateCode.KILL_SWITCH, GateCode.ALERTS_DISABLED)
    assert await store.get(candidate().key) is None


async def test_racing_monitors_pass_exactly_once(redis: Redis, redis_url: str, prefix: str) -> None:
    # Eight monitors, each with its own connection; the `redis` fixture cleans the prefix up.
    clients = [create_redis(redis_url) for _ in range(8)]
    try:
        stores = [ThrottleStore(c, prefix) for c in clients]
        for round_no in range(5):
            now = T0 + timedelta(hours=round_no)
            price = str(100 + 10 * round_no)
            decisions = await asyncio.gather(
                *(s.try_pass(candidate(price), RULES, now) for s in stores for _ in range(4))
            )
            assert sum(d.allowed for d in decisions) == 1, f"round {round_no}"
            assert {d.code for d in decisions if not d.allowed} == {GateCode.COOLDOWN}
    finally:
        for c in clients:
            await c.aclose()
