"""make bench-steps' timers: every batch of a running orchestrator timed with its round trips, then undone."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from services.orchestrator import key_locks
from services.orchestrator.app import build_app
from shared.consumer import StreamConsumer
from shared.streams import GROUP_ORCHESTRATOR, StreamNames
from tests.bench.steps import STEPS, Record, step_timers
from tests.support.eventually import eventually
from tests.support.pipeline import events, group_drained, running, signal, xadd


async def test_each_batch_is_timed_with_its_read_commit_and_settle_and_the_timers_go_after(
    make_settings, redis: Redis, names: StreamNames
) -> None:
    originals = (
        StreamConsumer.process,
        StreamConsumer.settle,
        key_locks.lock_and_read,
        key_locks.KeyLocks.commit_and_release,
    )
    records: list[Record] = []
    signals = [signal("BTC_USDT", "BUY", "50000", f"steps:{uuid.uuid4().hex[:6]}:{n}") for n in range(5)]

    with step_timers(records):
        async with running(build_app(make_settings())):
            for sig in signals:
                await xadd(redis, names.signals, sig)
            await eventually(
                lambda: events(redis, names.order_decisions), until=lambda e: len(e) == 5, what="5 decisions"
            )
            await eventually(
                lambda: group_drained(redis, names.signals, GROUP_ORCHESTRATOR), what="all acknowledged"
            )

    assert sum(r["entries"] for r in records) == 5
    for record in records:
        assert all(record[step] > 0 for step in STEPS), record
        assert record["ms"] >= sum(record[step] for step in STEPS)
        assert record["cpu_ms"] > 0
    assert (
        StreamConsumer.process,
        StreamConsumer.settle,
        key_locks.lock_and_read,
        key_locks.KeyLocks.commit_and_release,
    ) == originals
