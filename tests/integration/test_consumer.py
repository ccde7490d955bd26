"""The shared stream consumer on real Redis: ack after success, claim, MAX_DELIVERIES, outages."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from redis.asyncio import Redis

from shared.consumer import Delivery, Handler, RetryLater, StreamConsumer, ensure_group
from shared.events import SignalEmitted
from shared.settings import ConsumerSettings
from shared.streams import StreamNames
from tests.support.eventually import eventually
from tests.support.pipeline import events, running, signal, xadd

GROUP = "testers"


def consumer_settings(**overrides: Any) -> ConsumerSettings:
    values = {"claim_idle_ms": 300, "max_deliveries": 3, "batch_size": 10, "block_ms": 100, **overrides}
    fields = ConsumerSettings.model_fields
    return ConsumerSettings.model_validate({fields[k].alias or k: v for k, v in values.items()})


class Recorder:
    """A handler that remembers what it saw and fails on demand."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.done: list[str] = []
        self.fail_always: set[str] = set()
        self.transient_left = 0
        self.deliveries: dict[str, list[int]] = {}

    async def __call__(self, batch: list[Delivery[SignalEmitted]]) -> None:
        for d in batch:
            sid = str(d.event.signal_id)
            self.seen[sid] += 1
            self.deliveries.setdefault(sid, []).append(d.deliveries)
            if sid in self.fail_always:
                raise ValueError(f"cannot handle {sid}")
        if self.transient_left > 0:
            self.transient_left -= 1
            raise RetryLater("database briefly away")
        self.done.extend(str(d.event.signal_id) for d in batch)


def make_consumer(
    redis: Redis,
    names: StreamNames,
    handler: Handler[SignalEmitted],
    name: str,
    *,
    in_flight: int = 1,
    **settings: Any,
) -> StreamConsumer[SignalEmitted]:
    return StreamConsumer(
        redis,
        stream=names.signals,
        group=GROUP,
        model=SignalEmitted,
        handler=handler,
        dead_letter=names.dead_letter,
        settings=consumer_settings(**settings),
        name=name,
        in_flight=in_flight,
    )


async def pending(redis: Redis, names: StreamNames) -> int:
    return int((await redis.xpending(names.signals, GROUP))["pending"])


async def test_a_dead_consumers_entries_are_claimed_and_its_name_removed(redis, names) -> None:
    await ensure_group(redis, names.signals, GROUP)
    sigs = [signal() for _ in range(5)]
    for sig in sigs:
        await xadd(redis, names.signals, sig)
    taken = await redis.xreadgroup(GROUP, "dead-one", {names.signals: ">"}, count=10)
    assert len(taken[0][1]) == 5
    recorder = Recorder()
    async with running(make_consumer(redis, names, recorder, "alive")):
        await eventually(lambda: _done(recorder), until=lambda d: len(d) == 5, what="claimed entries handled")
        await eventually(lambda: pending(redis, names), until=lambda n: n == 0)
        await eventually(
            lambda: redis.xinfo_consumers(names.signals, GROUP),
            until=lambda cs: [c["name"] for c in cs] == ["alive"],
            what="the dead consumer removed from the group",
        )
    assert sorted(recorder.done) == sorted(str(s.signal_id) for s in sigs)
    assert all(d == [2] for d in recorder.deliveries.values())


async def _done(recorder: Recorder) -> list[str]:
    return recorder.done


async def test_an_entry_failing_every_time_goes_to_dead_letter_after_max_deliveries(redis, names) -> None:
    bad, good = signal(), signal()
    recorder = Recorder()
    recorder.fail_always.add(str(bad.signal_id))
    async with running(make_consumer(redis, names, recorder, "c1", max_deliveries=3)):
        await xadd(redis, names.signals, bad)
        await xadd(redis, names.signals, good)
        letters = await eventually(lambda: events(redis, names.dead_letter), timeout=30)
        await eventually(lambda: pending(redis, names), until=lambda n: n == 0)
    assert recorder.done == [str(good.signal_id)]
    assert sorted(set(recorder.deliveries[str(bad.signal_id)])) == [1, 2, 3]
    (letter,) = letters
    assert letter["signal_id"] == str(bad.signal_id)
    assert letter["deliveries"] == 3 and "MAX_DELIVERIES" in letter["error"]
    assert SignalEmitted.model_validate_json(letter["fields"]["event"]) == bad


async def test_a_transient_failure_is_retried_in_place_and_not_counted(redis, names) -> None:
    sig = signal()
    recorder = Recorder()
    recorder.transient_left = 3
    async with running(make_consumer(redis, names, recorder, "c1", max_deliveries=1)):
        await xadd(redis, names.signals, sig)
        await eventually(lambda: _done(recorder), until=lambda d: d == [str(sig.signal_id)])
        await eventually(lambda: pending(redis, names), until=lambda n: n == 0)
    assert recorder.seen[str(sig.signal_id)] == 4
    assert await redis.xlen(names.dead_letter) == 0


async def test_one_failing_entry_does_not_hold_back_its_batch(redis, names) -> None:
    sigs = [signal() for _ in range(4)]
    recorder = Recorder()
    recorder.fail_always.add(str(sigs[1].signal_id))
    for sig in sigs:
        await xadd(redis, names.signals, sig)
    async with running(make_consumer(redis, names, recorder, "c1", claim_idle_ms=60_000)):
        await eventually(lambda: _done(recorder), until=lambda d: len(d) == 3)
        assert await pending(redis, names) == 1
    assert str(sigs[1].signal_id) not in recorder.done


async def test_stop_leaves_an_unfinished_entry_pending_for_another_consumer(redis, names) -> None:
    sig = signal()
    recorder = Recorder()
    recorder.transient_left = 10_000
    async with running(make_consumer(redis, names, recorder, "c1")):
        await xadd(redis, names.signals, sig)
        await eventually(lambda: _seen(recorder), until=lambda n: n >= 1)
    assert await pending(redis, names) == 1
    second = Recorder()
    async with running(make_consumer(redis, names, second, "c2")):
        await eventually(lambda: _done(second), until=lambda d: d == [str(sig.signal_id)])


async def _seen(recorder: Recorder) -> int:
    return sum(recorder.seen.values())


@pytest.mark.parametrize("field", ["event", "type"])
async def test_entries_are_plain_json_any_client_can_read(redis, names, field) -> None:
    sig = signal()
    await xadd(redis, names.signals, sig)
    ((_, fields),) = await redis.xrange(names.signals)
    assert set(fields) == {"type", "event"}
    assert fields["type"] == "SignalEmitted"
    assert (await events(redis, names.signals))[0]["signal_id"] == str(sig.signal_id)


async def test_a_live_consumer_keeps_its_entries_while_handling_them_longer_than_claim_idle(
    redis, names
) -> None:
    # A PostgreSQL outage or Telegram backoff can hold a batch for many CLAIM_IDLE_MS: a second
    # live consumer must not claim it meanwhile (that would double the work, and inflate the
    # delivery count towards MAX_DELIVERIES with every consumer that takes a turn).
    sig = signal()
    slow, other = Recorder(), Recorder()
    slow.transient_left = 6  # 0.1 + 0.2 + … + 3.2 s of retries in place: ≫ claim_idle_ms (0.3 s)
    async with running(make_consumer(redis, names, slow, "slow", claim_idle_ms=300, max_deliveries=2)):
        await xadd(redis, names.signals, sig)
        await eventually(lambda: _seen(slow), until=lambda n: n >= 1)
        async with running(make_consumer(redis, names, other, "other", claim_idle_ms=300, max_deliveries=2)):
            await eventually(lambda: _done(slow), until=lambda d: d == [str(sig.signal_id)], timeout=60)
            await eventually(lambda: pending(redis, names), until=lambda n: n == 0)
    assert other.seen[str(sig.signal_id)] == 0
    assert set(slow.deliveries[str(sig.signal_id)]) == {1}
    assert await redis.xlen(names.dead_letter) == 0


async def test_a_batch_failing_as_the_consumer_stops_is_released_not_retried_one_by_one(redis, names) -> None:
    sigs = [signal() for _ in range(3)]
    for sig in sigs:
        await xadd(redis, names.signals, sig)
    stop = asyncio.Event()
    calls: list[int] = []

    async def fails_on_stop(batch: list[Delivery[SignalEmitted]]) -> None:
        calls.append(len(batch))
        stop.set()  # SIGTERM arrives while the batch is in hand, and the batch fails
        raise ValueError("aborted by the shutdown")

    consumer = make_consumer(redis, names, fails_on_stop, "c1", claim_idle_ms=60_000)
    await asyncio.wait_for(consumer.run(stop), timeout=15)
    assert calls == [3]
    assert await pending(redis, names) == 3


class Gate:
    """A handler that holds each batch until released, recording what is in hand at once."""

    def __init__(self) -> None:
        self.started: list[list[str]] = []
        self.release: dict[str, asyncio.Event] = {}
        self.most_at_once = 0
        self._in_hand = 0

    async def __call__(self, batch: list[Delivery[SignalEmitted]]) -> None:
        ids = [str(d.event.signal_id) for d in batch]
        self.started.append(ids)
        self._in_hand += 1
        self.most_at_once = max(self.most_at_once, self._in_hand)
        try:
            await self.release.setdefault(ids[0], asyncio.Event()).wait()
        finally:
            self._in_hand -= 1


def gated_consumer(
    redis: Redis, names: StreamNames, gate: Gate, in_flight: int, batch_size: int = 1
) -> StreamConsumer[SignalEmitted]:
    return make_consumer(redis, names, gate, "gated", in_flight=in_flight, batch_size=batch_size)


async def test_batches_in_flight_are_handled_together_and_each_acked_only_when_done(redis, names) -> None:
    first, second, third = signal(), signal(), signal()
    gate = Gate()
    async with running(gated_consumer(redis, names, gate, in_flight=2)):
        for sig in (first, second, third):
            await xadd(redis, names.signals, sig)
        # Two batches (of one entry each) are in hand at once; the third waits for a free slot.
        await eventually(lambda: _started(gate), until=lambda s: len(s) == 2)
        await asyncio.sleep(0.3)
        assert len(gate.started) == 2 and gate.most_at_once == 2
        assert await pending(redis, names) == 2
        # The second finishes first: acknowledged at once, while the first stays pending.
        gate.release.setdefault(gate.started[1][0], asyncio.Event()).set()
        await eventually(lambda: pending(redis, names), until=lambda n: n == 2)  # 1st + the 3rd read
        await eventually(lambda: _started(gate), until=lambda s: len(s) == 3)
        assert str(first.signal_id) == gate.started[0][0]
        assert gate.started[2] == [str(third.signal_id)]
        gate.release.setdefault(gate.started[0][0], asyncio.Event()).set()
        gate.release.setdefault(gate.started[2][0], asyncio.Event()).set()
        await eventually(lambda: pending(redis, names), until=lambda n: n == 0)
    assert gate.most_at_once == 2


async def test_one_batch_in_flight_handles_batches_one_after_another(redis, names) -> None:
    gate = Gate()
    async with running(gated_consumer(redis, names, gate, in_flight=1)):
        for _ in range(2):
            await xadd(redis, names.signals, signal())
        await eventually(lambda: _started(gate), until=lambda s: len(s) == 1)
        await asyncio.sleep(0.3)
        assert len(gate.started) == 1
        gate.release.setdefault(gate.started[0][0], asyncio.Event()).set()
        await eventually(lambda: _started(gate), until=lambda s: len(s) == 2)
        gate.release.setdefault(gate.started[1][0], asyncio.Event()).set()
        await eventually(lambda: pending(redis, names), until=lambda n: n == 0)
    assert gate.most_at_once == 1


async def _started(gate: Gate) -> list[list[str]]:
    return list(gate.started)


async def test_without_a_backlog_a_batch_is_handled_before_the_next_read(redis, names) -> None:
    # A read that returns less than a full batch means nothing is waiting: handle it first,
    # so what arrives meanwhile is read as one larger batch, not queued as one-entry batches.
    gate = Gate()
    async with running(gated_consumer(redis, names, gate, in_flight=2, batch_size=10)):
        await xadd(redis, names.signals, signal())
        await eventually(lambda: _started(gate), until=lambda s: len(s) == 1)
        later = [signal() for _ in range(3)]
        for sig in later:
            await xadd(redis, names.signals, sig)
        await asyncio.sleep(0.3)
        assert len(gate.started) == 1
        gate.release.setdefault(gate.started[0][0], asyncio.Event()).set()
        await eventually(lambda: _started(gate), until=lambda s: len(s) == 2)
        assert gate.started[1] == [str(s.signal_id) for s in later]
        gate.release.setdefault(gate.started[1][0], asyncio.Event()).set()
        await eventually(lambda: pending(redis, names), until=lambda n: n == 0)
