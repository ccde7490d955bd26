"""The shared stream consumer on real Redis: ack after success, claim, MAX_DELIVERIES, outages,
events published atomically with the acknowledgement."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.consumer import Delivery, Handler, RetryLater, Settlement, StreamConsumer, ensure_group
from shared.events import SignalEmitted
from shared.settings import ConsumerSettings
from shared.streams import EVENT_FIELD, TYPE_FIELD, StreamNames, encode_entry
from tests.support.eventually import eventually
from tests.support.pipeline import events, group_drained, running, signal, xadd

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
        self.transient: Exception = RetryLater("database briefly away")
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
            raise self.transient
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


@pytest.mark.parametrize(
    "failure",
    [RetryLater("database briefly away"), asyncpg.exceptions.DeadlockDetectedError("deadlock detected")],
    ids=["retry-later", "deadlock-victim"],
)
async def test_a_transient_failure_is_retried_in_place_and_not_counted(redis, names, failure) -> None:
    sig = signal()
    recorder = Recorder()
    recorder.transient = failure
    recorder.transient_left = 3
    async with running(make_consumer(redis, names, recorder, "c1", max_deliveries=1)):
        await xadd(redis, names.signals, sig)
        await eventually(lambda: _done(recorder), until=lambda d: d == [str(sig.signal_id)])
        await eventually(lambda: pending(redis, names), until=lambda n: n == 0)
    assert recorder.seen[str(sig.signal_id)] == 4
    assert recorder.deliveries[str(sig.signal_id)] == [1, 1, 1, 1]  # never redelivered, never counted
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


# Travels through the settle script's JSON arguments: must come out byte for byte.
TRICKY = 'é "quoted" \\ back\nslash\t\u2028 🚀 [1, {"a": null}] \x00 end'


class Settler:
    """A handler that decides each entry by publishing events with the acknowledgement.

    Per decided entry: encode_entry(its event), then `extra` entries whose fields are in another
    order (and more fields, one of quotes, escapes and non-ASCII), so the test sees each entry's
    fields kept exactly as given.
    """

    def __init__(self, stream: str, *, keep: Collection[str] = (), extra: int = 1, maxlen: int | None = None):
        self.stream = stream
        self.keep = set(keep)
        self.extra = extra
        self.maxlen = maxlen
        self.published: list[dict[str, str]] = []
        self.batches = 0

    async def __call__(self, batch: list[Delivery[SignalEmitted]]) -> Settlement:
        self.batches += 1
        kept = [d.entry_id for d in batch if str(d.event.signal_id) in self.keep]
        entries: list[dict[str, str]] = []
        for d in batch:
            if d.entry_id in kept:
                continue
            entries.append(encode_entry(d.event))
            for n in range(self.extra):
                entries.append({EVENT_FIELD: d.entry_id, TYPE_FIELD: "Echo", "n": str(n), "text": TRICKY})
        self.published.extend(entries)
        return Settlement(self.stream, entries, keep=kept, maxlen=self.maxlen)


async def published(redis: Redis, stream: str) -> list[list[tuple[str, str]]]:
    """The fields of every entry of a stream, in stream order and in each entry's field order."""
    entries: Any = await redis.xrange(stream, "-", "+")
    return [list(fields.items()) for _, fields in entries]


async def owners(redis: Redis, names: StreamNames) -> dict[str, str]:
    """Map each pending entry id of the signals stream to the consumer that owns it."""
    rows: Any = await redis.xpending_range(names.signals, GROUP, min="-", max="+", count=100)
    return {str(r["message_id"]): str(r["consumer"]) for r in rows}


async def read_as(redis: Redis, names: StreamNames, consumer: str, sigs: list[SignalEmitted]) -> list[str]:
    """Append the signals and read them into `consumer`'s pending list; return their entry ids."""
    await ensure_group(redis, names.signals, GROUP)
    ids = [await xadd(redis, names.signals, sig) for sig in sigs]
    taken: Any = await redis.xreadgroup(GROUP, consumer, {names.signals: ">"}, count=100)
    assert [entry_id for entry_id, _ in taken[0][1]] == ids
    return ids


async def test_a_handler_s_events_are_published_with_the_acknowledgement(redis, names) -> None:
    target = names.key("settled")
    sigs = [signal() for _ in range(3)]
    for sig in sigs:
        await xadd(redis, names.signals, sig)
    settler = Settler(target)
    async with running(make_consumer(redis, names, settler, "c1", claim_idle_ms=60_000)):
        got = await eventually(lambda: published(redis, target), until=lambda p: len(p) == 6)
        # One atomic step: once the events are visible the entries are acknowledged too.
        assert await pending(redis, names) == 0
    assert got == [list(fields.items()) for fields in settler.published]
    assert [json.loads(dict(fields)[EVENT_FIELD])["signal_id"] for fields in got[::2]] == [
        str(s.signal_id) for s in sigs
    ]
    assert got[1] == [(EVENT_FIELD, got[1][0][1]), (TYPE_FIELD, "Echo"), ("n", "0"), ("text", TRICKY)]


async def test_kept_entries_stay_pending_while_the_others_are_acked_with_their_events(redis, names) -> None:
    target = names.key("settled")
    sigs = [signal() for _ in range(3)]
    ids = [await xadd(redis, names.signals, sig) for sig in sigs]
    settler = Settler(target, keep={str(sigs[1].signal_id)})
    async with running(make_consumer(redis, names, settler, "c1", claim_idle_ms=60_000)):
        got = await eventually(lambda: published(redis, target), until=lambda p: len(p) == 4)
        assert await owners(redis, names) == {ids[1]: "c1"}
    decided = [json.loads(dict(fields)[EVENT_FIELD])["signal_id"] for fields in got[::2]]
    assert decided == [str(sigs[0].signal_id), str(sigs[2].signal_id)]
    assert got == [list(fields.items()) for fields in settler.published]


async def test_a_plain_collection_of_ids_is_still_kept_pending(redis, names) -> None:
    await ensure_group(redis, names.signals, GROUP)
    sigs = [signal() for _ in range(3)]
    ids = [await xadd(redis, names.signals, sig) for sig in sigs]

    async def keep_the_first(batch: list[Delivery[SignalEmitted]]) -> list[str]:
        return [batch[0].entry_id]

    async with running(make_consumer(redis, names, keep_the_first, "c1", claim_idle_ms=60_000)):
        await eventually(lambda: owners(redis, names), until=lambda o: o == {ids[0]: "c1"})


async def test_settling_again_after_a_lost_reply_publishes_nothing_more(redis, names) -> None:
    target = names.key("settled")
    sigs = [signal() for _ in range(2)]
    ids = await read_as(redis, names, "c1", sigs)
    consumer = make_consumer(redis, names, Recorder(), "c1")
    settlement = Settlement(target, [encode_entry(s) for s in sigs])
    stop = asyncio.Event()
    assert await consumer.ack_and_publish(ids, settlement, stop) is True
    # The reply was lost (an outage): retry_outages sends the same script again.
    assert await consumer.ack_and_publish(ids, settlement, stop) is False
    assert await published(redis, target) == [list(encode_entry(s).items()) for s in sigs]
    assert await pending(redis, names) == 0


async def test_settling_reads_the_next_entries_in_the_same_step(redis, names) -> None:
    target = names.key("settled")
    sigs = [signal() for _ in range(2)]
    ids = await read_as(redis, names, "c1", sigs)
    waiting = [signal() for _ in range(3)]
    waiting_ids = [await xadd(redis, names.signals, sig) for sig in waiting]
    consumer = make_consumer(redis, names, Recorder(), "c1")
    settlement = Settlement(target, [encode_entry(s) for s in sigs])
    stop = asyncio.Event()
    settled, following = await consumer.settle(ids, settlement, stop, read_next=2)
    assert settled is True
    # Up to read_next of the new entries, as XREADGROUP returns them, now delivered to c1.
    assert following == [(i, encode_entry(s)) for i, s in zip(waiting_ids[:2], waiting[:2], strict=True)]
    assert await owners(redis, names) == {i: "c1" for i in waiting_ids[:2]}
    assert await published(redis, target) == [list(encode_entry(s).items()) for s in sigs]
    # Settled already (a lost reply, retried): nothing published, acknowledged or read.
    assert await consumer.settle(ids, settlement, stop, read_next=2) == (False, [])
    assert await owners(redis, names) == {i: "c1" for i in waiting_ids[:2]}
    # Nothing waiting: settled, nothing read.
    rest: Any = await redis.xreadgroup(GROUP, "c1", {names.signals: ">"}, count=100)
    assert [entry_id for entry_id, _ in rest[0][1]] == waiting_ids[2:]
    assert await consumer.settle(waiting_ids, Settlement(target, []), stop, read_next=5) == (True, [])
    assert await pending(redis, names) == 0


class Trickle:
    """A settling handler whose first batch, while in hand, sees three more signals arrive."""

    def __init__(
        self,
        redis: Redis,
        names: StreamNames,
        *,
        each_batch: Callable[[], object] = lambda: None,
        after_first: Callable[[], object] = lambda: None,
    ) -> None:
        self.redis = redis
        self.names = names
        self.target = names.key("settled")
        self.first, self.later = signal(), [signal() for _ in range(3)]
        self.settler = Settler(self.target, extra=0)
        self.each_batch = each_batch
        self.after_first = after_first

    async def __call__(self, batch: list[Delivery[SignalEmitted]]) -> Settlement:
        self.each_batch()
        if batch[0].event.signal_id == self.first.signal_id:
            for sig in self.later:
                await xadd(self.redis, self.names.signals, sig)
            self.after_first()
        return await self.settler(batch)


async def test_a_trickle_is_handled_batch_after_batch_from_what_each_settlement_read(
    redis, names, monkeypatch
) -> None:
    # While a batch is in hand, more arrives; its settlement reads it, and the consumer
    # handles it next without a read of its own.
    reads_by_batch: list[int] = []
    trickle = Trickle(redis, names, each_batch=lambda: reads_by_batch.append(reads))
    consumer = make_consumer(redis, names, trickle, "c1")
    reads = 0
    read = consumer.redis.xreadgroup

    async def counting_read(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return await read(*args, **kwargs)

    monkeypatch.setattr(consumer.redis, "xreadgroup", counting_read)
    async with running(consumer):
        await xadd(redis, names.signals, trickle.first)
        await eventually(
            lambda: published(redis, trickle.target), until=lambda p: len(p) == 4, what="4 events"
        )
        await eventually(lambda: pending(redis, names), until=lambda n: n == 0)
    assert trickle.settler.batches == 2
    # The second batch came with the first one's settlement: no read in between.
    assert reads_by_batch[0] == reads_by_batch[1] >= 1
    assert [dict(p)[EVENT_FIELD] for p in await published(redis, trickle.target)] == [
        encode_entry(s)[EVENT_FIELD] for s in [trickle.first, *trickle.later]
    ]


async def test_a_consumer_told_to_stop_leaves_nothing_read_and_unhandled(redis, names) -> None:
    # Stop comes while a batch is in hand and more is waiting: its settlement reads nothing
    # more (what it read would wait CLAIM_IDLE_MS for a claim), the rest stays for the next
    # consumer to read.
    stop = asyncio.Event()
    trickle = Trickle(redis, names, after_first=stop.set)
    consumer = make_consumer(redis, names, trickle, "c1", claim_idle_ms=60_000)
    await ensure_group(redis, names.signals, GROUP)
    await xadd(redis, names.signals, trickle.first)
    await asyncio.wait_for(consumer.run(stop), timeout=30)
    assert trickle.settler.batches == 1
    assert await pending(redis, names) == 0
    rest: Any = await redis.xreadgroup(GROUP, "c2", {names.signals: ">"}, count=10)
    assert [json.loads(fields[EVENT_FIELD])["signal_id"] for _, fields in rest[0][1]] == [
        str(s.signal_id) for s in trickle.later
    ]


async def test_entries_read_by_the_last_settlement_before_stop_are_handled_before_returning(
    redis, names, monkeypatch
) -> None:
    stop = asyncio.Event()
    trickle = Trickle(redis, names)
    consumer = make_consumer(redis, names, trickle, "c1", claim_idle_ms=60_000)
    settle = consumer.settle

    async def settle_then_stop(*args: Any, **kwargs: Any) -> Any:
        result = await settle(*args, **kwargs)
        stop.set()  # just after the script read the next entries for this consumer
        return result

    monkeypatch.setattr(consumer, "settle", settle_then_stop)
    await ensure_group(redis, names.signals, GROUP)
    await xadd(redis, names.signals, trickle.first)
    await asyncio.wait_for(consumer.run(stop), timeout=30)
    assert trickle.settler.batches == 2
    assert await pending(redis, names) == 0
    assert len(await published(redis, trickle.target)) == 4


@pytest.mark.parametrize("claimed", ["all", "last"])
async def test_entries_claimed_by_another_consumer_are_neither_published_nor_acked(
    redis, names, claimed
) -> None:
    target = names.key("settled")
    sigs = [signal() for _ in range(3)]
    ids = await read_as(redis, names, "c1", sigs)
    taken = ids if claimed == "all" else ids[-1:]
    await redis.xclaim(names.signals, GROUP, "thief", min_idle_time=0, message_ids=taken)
    consumer = make_consumer(redis, names, Recorder(), "c1")
    settlement = Settlement(target, [encode_entry(s) for s in sigs], maxlen=100)
    assert await consumer.ack_and_publish(ids, settlement, asyncio.Event()) is False
    assert await redis.exists(target) == 0
    assert await owners(redis, names) == {i: "thief" if i in taken else "c1" for i in ids}


@pytest.mark.parametrize("order", ["reversed", "with ours in between"])
async def test_ownership_is_checked_for_every_id_whatever_their_order(redis, names, order) -> None:
    # The script lists this consumer's entries from the first id to the last, as many as there
    # are ids; an id that listing misses is asked about on its own, owned or not.
    target = names.key("settled")
    sigs = [signal() for _ in range(5)]
    ids = await read_as(redis, names, "c1", sigs)
    batch = ids[::-1] if order == "reversed" else [ids[0], ids[3], ids[4]]
    consumer = make_consumer(redis, names, Recorder(), "c1")
    await redis.xclaim(names.signals, GROUP, "thief", min_idle_time=0, message_ids=[ids[4]])
    settlement = Settlement(target, [encode_entry(sigs[0])])
    assert await consumer.ack_and_publish(batch, settlement, asyncio.Event()) is False
    assert await redis.exists(target) == 0
    await redis.xclaim(names.signals, GROUP, "c1", min_idle_time=0, message_ids=[ids[4]])
    assert await consumer.ack_and_publish(batch, settlement, asyncio.Event()) is True
    assert await owners(redis, names) == {i: "c1" for i in ids if i not in batch}
    assert await published(redis, target) == [list(encode_entry(sigs[0]).items())]


async def test_a_batch_claimed_while_in_hand_is_not_settled_by_its_old_owner(redis, names) -> None:
    # The handler was paused past CLAIM_IDLE_MS (a GC stop, a frozen VM): another consumer
    # claimed the batch and will handle and publish it; the old owner must publish nothing.
    target = names.key("settled")
    sigs = [signal() for _ in range(2)]
    ids = [await xadd(redis, names.signals, sig) for sig in sigs]
    settler = Settler(target)

    async def claimed_meanwhile(batch: list[Delivery[SignalEmitted]]) -> Settlement:
        await redis.xclaim(names.signals, GROUP, "thief", min_idle_time=0, message_ids=ids)
        return await settler(batch)

    consumer = make_consumer(redis, names, claimed_meanwhile, "c1", claim_idle_ms=60_000)
    async with running(consumer):
        await eventually(lambda: _batches(settler), until=lambda n: n == 1)
    assert await redis.exists(target) == 0
    assert await owners(redis, names) == {i: "thief" for i in ids}
    assert consumer.health.processed == 0


async def _batches(settler: Settler) -> int:
    return settler.batches


async def test_maxlen_trims_the_target_stream_approximately(redis, names) -> None:
    target = names.key("settled")
    maxlen = 10
    sigs = [signal() for _ in range(40)]
    for sig in sigs:
        await xadd(redis, names.signals, sig)
    settler = Settler(target, extra=9, maxlen=maxlen)
    async with running(make_consumer(redis, names, settler, "c1", batch_size=4)):
        await eventually(lambda: group_drained(redis, names.signals, GROUP), what="every signal settled")
    assert settler.batches >= 10
    info: Any = await redis.xinfo_stream(target)
    assert info["entries-added"] == 400
    # `~` trims whole macro nodes only: never below maxlen, at most one node's worth above it.
    node: Any = await redis.config_get("stream-node-max-entries")
    assert maxlen <= await redis.xlen(target) <= maxlen + int(node["stream-node-max-entries"])


async def test_events_with_every_entry_kept_are_a_programming_error(redis, names) -> None:
    target = names.key("settled")
    sigs = [signal() for _ in range(2)]
    for sig in sigs:
        await xadd(redis, names.signals, sig)

    async def keeps_all(batch: list[Delivery[SignalEmitted]]) -> Settlement:
        # Decides nothing (keeps every entry), yet hands back events anyway.
        return Settlement(target, [encode_entry(d.event) for d in batch], keep=[d.entry_id for d in batch])

    consumer = make_consumer(redis, names, keeps_all, "c1", claim_idle_ms=60_000)
    with pytest.raises(ValueError, match="kept every entry"):
        await asyncio.wait_for(consumer.run(asyncio.Event()), timeout=15)
    assert await redis.exists(target) == 0
    assert await pending(redis, names) == 2
    with pytest.raises(ValueError, match="no fields"):
        Settlement(target, [{}])


async def test_a_publish_that_fails_acknowledges_nothing(redis, names) -> None:
    # A Lua script is not rolled back when a command fails: the XACK must come after the XADDs.
    target = names.key("not-a-stream")
    await redis.set(target, "x")
    sigs = [signal() for _ in range(2)]
    ids = await read_as(redis, names, "c1", sigs)
    consumer = make_consumer(redis, names, Recorder(), "c1")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await consumer.ack_and_publish(
            ids, Settlement(target, [encode_entry(s) for s in sigs]), asyncio.Event()
        )
    assert await owners(redis, names) == {i: "c1" for i in ids}
