"""The benchmark's rate publisher: signals built before the clock, sent with their send time."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from shared.events import SignalEmitted
from shared.streams import EVENT_FIELD, StreamNames
from tests.bench.load import delete_keys, prebuild, publish_at_rate


def test_a_prebuilt_signal_is_sent_valid_with_the_time_it_is_stamped() -> None:
    built = prebuild(3, "t")
    assert len({b.signal_id for b in built}) == 3
    at = "2026-01-02T03:04:05.123456Z"
    event = SignalEmitted.model_validate_json(built[1].stamped(at)[EVENT_FIELD])
    assert str(event.signal_id) == built[1].signal_id
    assert event.emitted_at == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert event.strategy == "bench:t:1"
    # The prebuilt entry itself is left as it was: it could be stamped again.
    assert at not in built[1].fields[EVENT_FIELD]


async def test_publish_at_rate_sends_each_signal_once_emitted_when_sent(
    redis: Redis, names: StreamNames
) -> None:
    built = prebuild(20, "rate")
    before = datetime.now(UTC)
    started = time.time()
    published = await publish_at_rate(redis, names.signals, rate=400, seconds=0.05, entries=built)
    after = datetime.now(UTC)

    entries: Any = await redis.xrange(names.signals)
    events = [SignalEmitted.model_validate_json(fields[EVENT_FIELD]) for _, fields in entries]
    assert [str(e.signal_id) for e in events] == [b.signal_id for b in built[:20]]
    assert set(published) == {b.signal_id for b in built[:20]}
    assert all(started <= t <= time.time() for t in published.values())
    # Each emitted_at is its send time (stamped just after the publish time), not when it was built.
    for event in events:
        assert before <= event.emitted_at <= after
        assert event.emitted_at.timestamp() >= published[str(event.signal_id)] - 1e-6


async def test_publish_at_rate_wants_an_entry_for_every_signal_due(redis: Redis, names: StreamNames) -> None:
    with pytest.raises(ValueError, match="20 entries are needed"):
        await publish_at_rate(redis, names.signals, rate=400, seconds=0.05, entries=prebuild(19, "short"))
    assert await redis.exists(names.signals) == 0


async def test_a_run_deletes_its_own_keys_and_no_one_elses(redis: Redis, redis_url: str, prefix: str) -> None:
    run = f"{prefix}bench-run:"
    await redis.xadd(f"{run}signals", {"n": "1"})
    await redis.set(f"{run}throttle:BTC_USDT|BUY|s", "x")
    await redis.set(f"{prefix}other", "kept")

    await delete_keys(redis_url, run)

    assert [k async for k in redis.scan_iter(match=f"{run}*")] == []
    assert await redis.get(f"{prefix}other") is not None
