"""The stream consumer every service uses: groups, ack after commit, claim, dead-letter.

Why our own loop on redis-py rather than FastStream's subscriber: in FastStream 0.7
a nacked Redis stream entry stays pending with nothing to redeliver it, its claiming
subscriber never reads new entries, and a lost consumer group stops the app. This
product needs all three, so one small loop does them explicitly:

* read new entries with XREADGROUP (COUNT bounded by CONSUMER_BATCH_SIZE);
* decode each into its event model; an entry that fails validation goes to
  `dead-letter` with the reason and is acknowledged at once;
* hand the valid ones to the handler as one batch; acknowledge them (one XACK)
  only after the handler returns, i.e. after its effects are committed; a handler
  may hand back events (a Settlement) that are published atomically with that
  acknowledgement, in one script, only while this consumer still owns the entries;
* a transient failure (Redis/PostgreSQL unreachable, or the handler raising
  RetryLater) is retried in place with backoff, uncounted; any other failure
  leaves the entry pending, where a claim round (this consumer or another)
  takes it once idle longer than CLAIM_IDLE_MS; an entry delivered
  MAX_DELIVERIES times goes to `dead-letter`;
* while a batch is in hand its entries' idle time is renewed (a lease), so a live
  consumer's slow batch is never claimed from under it; only a dead one's is;
* a lost group (Redis restarted without its data) is recreated, reading from 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

import asyncpg
import orjson
from pydantic import BaseModel, ValidationError
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared.db import POSTGRES_OUTAGES
from shared.events import DeadLetter
from shared.logging import get_logger
from shared.settings import ConsumerSettings
from shared.streams import EVENT_FIELD, encode_entry

E = TypeVar("E", bound=BaseModel)
Entry = tuple[str, dict[str, str] | None]
"""A stream entry as XREADGROUP replies parse it: its id and fields (None once deleted)."""
T = TypeVar("T")
log = get_logger("intentflow.consumer")


class RetryLater(Exception):
    """Raised by a handler when its failure is transient: retry in place, do not count it."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RetryLater,
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    *POSTGRES_OUTAGES,  # OSError and TimeoutError among them: a socket to either server
    # PostgreSQL ended this transaction to break a lock cycle with another: nothing of it was
    # written, and the same work succeeds when tried again.
    asyncpg.exceptions.DeadlockDetectedError,
)


def is_transient(exc: BaseException) -> bool:
    """Tell whether a failure is an outage (retry, uncounted) rather than a bad entry."""
    if isinstance(exc, redis_errors.ResponseError) and "READONLY" in str(exc):
        return True
    return isinstance(exc, TRANSIENT_ERRORS)


def consumer_name(service: str) -> str:
    """Name this process's consumer uniquely and recognisably: service-host-pid-random."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Delivery(NamedTuple, Generic[E]):
    """One entry handed to a handler: its id, its decoded event, how often it was delivered.

    A named tuple: made once per entry consumed, in half the time of a frozen dataclass.
    """

    entry_id: str
    event: E
    deliveries: int = 1


@dataclass(frozen=True)
class Settlement:
    """What a handler hands back to have events published in the same atomic step as its ack.

    The entries of the batch not in `keep` are acknowledged and each of `entries` (the fields
    `encode_entry` makes, in their order) is XADDed to `stream`, in order, with `MAXLEN ~ maxlen`
    when given, by one script: all of it or none. None of it happens once this consumer no
    longer owns every one of those entries (an earlier attempt settled them and its reply was
    lost, or another consumer claimed them), so a retry or a claim never publishes twice.
    """

    stream: str
    entries: Sequence[dict[str, str]]
    keep: Collection[str] = ()
    maxlen: int | None = None

    def __post_init__(self) -> None:
        if any(not fields for fields in self.entries):
            raise ValueError("Settlement: an entry has no fields; pass encode_entry(event) for each event")
        if self.maxlen is not None and self.maxlen < 0:
            raise ValueError(f"Settlement: maxlen must be None or >= 0, not {self.maxlen}")


Handler = Callable[[list[Delivery[E]]], Awaitable[Collection[str] | Settlement | None]]
"""Handle a batch with its effects committed; return ids to leave pending (retried later), or None,
or a Settlement: those ids plus events to publish atomically with the acknowledgement."""


@dataclass
class ConsumerHealth:
    """What readiness reports: is the consumer connected, and what failed last."""

    connected: bool = False
    last_error: str | None = None
    processed: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    last_ok: float = field(default_factory=time.monotonic)


async def publish(redis: Redis, stream_key: str, event: BaseModel, *, maxlen: int | None = None) -> str:
    """XADD one event as a JSON entry; return the entry id."""
    entry_id = await redis.xadd(
        stream_key,
        encode_entry(event),  # type: ignore[arg-type]
        maxlen=maxlen,
        approximate=True,
    )
    return str(entry_id)


async def ensure_group(redis: Redis, stream_key: str, group: str) -> None:
    """Create the consumer group (and the stream) if missing, reading from the start."""
    try:
        await redis.xgroup_create(stream_key, group, id="0", mkstream=True)
    except redis_errors.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _signal_id_of(fields: dict[str, str] | None) -> str | None:
    if not fields:
        return None
    try:
        data = json.loads(fields.get(EVENT_FIELD, ""))
    except (TypeError, ValueError):
        return None
    value = data.get("signal_id") if isinstance(data, dict) else None
    return str(value)[:64] if value is not None else None


class StreamConsumer(Generic[E]):
    """Consume one stream in one group with one handler, until told to stop."""

    def __init__(
        self,
        redis: Redis,
        *,
        stream: str,
        group: str,
        model: type[E],
        handler: Handler[E],
        dead_letter: str,
        settings: ConsumerSettings,
        name: str | None = None,
        health: ConsumerHealth | None = None,
        dead_letter_maxlen: int | None = None,
        in_flight: int = 1,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.model = model
        self.handler = handler
        self.dead_letter = dead_letter
        self.settings = settings
        self.name = name or consumer_name(group)
        self.health = health or ConsumerHealth()
        self.dead_letter_maxlen = dead_letter_maxlen
        self.in_flight = max(1, in_flight)
        self._batches: set[asyncio.Task[list[Entry]]] = set()
        self._claim_every = max(0.05, min(settings.claim_idle_ms / 2000, 5.0))
        self._ack_and_publish_script: AsyncScript = redis.register_script(_ACK_AND_PUBLISH)
        self.log = log.bind(stream=stream, group=group, consumer=self.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Read, handle, acknowledge and claim until stop is set; survive outages.

        With in_flight > 1 and a backlog (a read returned a full batch), the next batch is read
        and handled while earlier ones still wait on their database or Redis round trips (at
        most in_flight batches at once, as that many consumers would). Without a backlog a
        batch is handled before the next read, so a trickle makes fewer, larger batches rather
        than many one-entry batches queueing behind each other's locks. Every batch is still
        acknowledged only after its handler returned.
        """
        try:
            prefetched = await self._run(stop)
            if prefetched:
                # Read with the last batch's settlement just as stop came: delivered to this
                # consumer, so handle them rather than leave them for a claim.
                await self.process(prefetched, {}, stop)
        except asyncio.CancelledError:
            for batch in self._batches:
                batch.cancel()
            raise
        finally:
            await self._settle_batches(wait_all=True)

    async def _run(self, stop: asyncio.Event) -> list[Entry]:
        """The loop of run(); returns entries read for it but not yet handled when stop came."""
        backoff = 0.1
        next_claim = 0.0
        group_ready = False
        # Entries a batch's settlement read for us (read with its acknowledgement, one round
        # trip instead of two): the next batch, handled without a read of its own.
        prefetched: list[Entry] = []
        while not stop.is_set():
            try:
                await self._settle_batches(wait_all=False)
                if not group_ready:
                    await ensure_group(self.redis, self.stream, self.group)
                    group_ready = True
                if time.monotonic() >= next_claim:
                    await self.claim_round(stop)
                    next_claim = time.monotonic() + self._claim_every
                if prefetched:
                    entries, prefetched = prefetched, []
                else:
                    response: Any = await self.redis.xreadgroup(
                        self.group,
                        self.name,
                        {self.stream: ">"},
                        count=self.settings.batch_size,
                        block=self.settings.block_ms,
                    )
                    self._mark_ok()
                    backoff = 0.1
                    entries = response[0][1] if response else []
                if entries and (self.in_flight == 1 or len(entries) < self.settings.batch_size):
                    # No backlog: handle it now, so what arrives meanwhile makes one larger batch.
                    prefetched = await self.process(entries, {}, stop, read_next=self.settings.batch_size)
                elif entries:
                    # A full batch: more is waiting, read it while this one waits on its commit.
                    self._batches.add(asyncio.create_task(self.process(entries, {}, stop)))
            except redis_errors.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self.log.warning("consumer group missing, recreating it")
                    group_ready = False
                    prefetched = []  # read in the lost group: the new one delivers them again
                    continue
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._mark_down(exc)
                self.log.warning("redis unreachable, retrying", error=type(exc).__name__, delay_s=backoff)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 5.0)
                group_ready = False
        return prefetched

    async def _settle_batches(self, *, wait_all: bool) -> None:
        """Reap finished batch tasks, raising the first failure; wait while at in_flight (or all)."""
        while self._batches:
            finished = {t for t in self._batches if t.done()}
            if not finished:
                if not wait_all and len(self._batches) < self.in_flight:
                    return
                await asyncio.wait(self._batches, return_when=asyncio.FIRST_COMPLETED)
                continue
            self._batches -= finished
            failed = [e for t in finished if not t.cancelled() and (e := t.exception()) is not None]
            if failed and not wait_all:
                raise failed[0]
            for exc in failed:
                self.log.error("batch failed while stopping", error=repr(exc)[:300])

    def _mark_ok(self) -> None:
        self.health.connected = True
        self.health.last_ok = time.monotonic()

    def _mark_down(self, exc: BaseException) -> None:
        self.health.connected = False
        self.health.last_error = f"{type(exc).__name__}: {exc}"[:300]

    async def process(
        self,
        entries: Sequence[tuple[str, dict[str, str] | None]],
        deliveries: dict[str, int],
        stop: asyncio.Event,
        *,
        read_next: int = 0,
    ) -> list[Entry]:
        """Decode entries, dead-letter the invalid ones, hand the rest to the handler, ack.

        With read_next, a batch settled by a Settlement also reads up to that many new entries
        in the same script; they are returned (delivered to this consumer) for the caller to
        process next. Otherwise, or when nothing was waiting, the result is empty.
        """
        valid: list[Delivery[E]] = []
        dead: list[tuple[str, dict[str, str], str, int]] = []
        # model_validate_json minus its Python wrapper (~0.5 µs an entry): the same validator.
        validate = self.model.__pydantic_validator__.validate_json
        for entry_id, fields in entries:
            count = deliveries.get(entry_id, 1)
            if fields is None:
                continue
            raw = fields.get(EVENT_FIELD)
            if raw is None:
                dead.append((entry_id, fields, f"entry has no '{EVENT_FIELD}' field", count))
                continue
            try:
                event = validate(raw)
            except ValidationError as exc:
                reason = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}"
                    for e in exc.errors(include_url=False)
                )
                dead.append((entry_id, fields, f"invalid {self.model.__name__}: {reason}", count))
                continue
            valid.append(Delivery(entry_id, event, count))
        if dead:
            await self.send_to_dead_letter(dead, stop)
        if valid:
            return await self._handle(valid, stop, read_next)
        return []

    async def _handle(self, batch: list[Delivery[E]], stop: asyncio.Event, read_next: int = 0) -> list[Entry]:
        # While the handler works (or retries an outage in place) the entries must not look idle,
        # or another live consumer claims them: the work would be done twice and every claim
        # would count a delivery towards MAX_DELIVERIES. A dead consumer stops renewing.
        lease = _Lease(
            self._renew_lease, [d.entry_id for d in batch], max(0.02, self.settings.claim_idle_ms / 3000)
        )
        try:
            return await self._handle_leased(batch, stop, read_next)
        finally:
            lease.end()

    async def _renew_lease(self, ids: list[str]) -> None:
        with contextlib.suppress(Exception):  # Redis away: nobody can claim meanwhile either
            await self.redis.eval(_RENEW_LEASE, 1, self.stream, self.group, self.name, *ids)

    async def _handle_leased(
        self, batch: list[Delivery[E]], stop: asyncio.Event, read_next: int = 0
    ) -> list[Entry]:
        backoff = 0.1
        while True:
            try:
                result = await self.handler(batch)
            except Exception as exc:
                if is_transient(exc):
                    self._mark_down(exc)
                    if stop.is_set():
                        self.log.info("stopping with entries unacknowledged", entries=len(batch))
                        return []
                    self.log.warning("transient failure, retrying", error=type(exc).__name__, delay_s=backoff)
                    await _sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if len(batch) > 1 and stop.is_set():
                    # Shutting down: release the batch (it stays pending) rather than start over.
                    self.log.info("stopping with a failed batch unacknowledged", entries=len(batch))
                    return []
                if len(batch) > 1:
                    self.log.warning("batch failed, retrying its entries one by one", error=repr(exc)[:300])
                    for delivery in batch:
                        if stop.is_set():
                            return []
                        await self._handle_leased([delivery], stop)
                    return []
                self.log.error(
                    "entry failed; it stays pending and is retried after CLAIM_IDLE_MS",
                    entry_id=batch[0].entry_id,
                    signal_id=str(getattr(batch[0].event, "signal_id", "")) or None,
                    deliveries=batch[0].deliveries,
                    error=repr(exc)[:500],
                )
                return []
            following: list[Entry] = []
            if isinstance(result, Settlement):
                settlement = result
                done = [d.entry_id for d in batch if d.entry_id not in settlement.keep]
                if done or settlement.entries:
                    # Stopping: read nothing more (it would wait CLAIM_IDLE_MS for another consumer).
                    more = 0 if stop.is_set() else read_next
                    settled, following = await self.settle(done, settlement, stop, read_next=more)
                    if not settled:
                        return []
            else:
                done = [d.entry_id for d in batch if not result or d.entry_id not in result]
                if done:
                    await self._ack(done, stop)
            self.health.processed += len(done)
            return following

    async def _ack(self, ids: list[str], stop: asyncio.Event) -> None:
        await retry_outages(
            lambda: self.redis.xack(self.stream, self.group, *ids), stop, on_outage=self._mark_down
        )

    async def ack_and_publish(self, ids: Sequence[str], settlement: Settlement, stop: asyncio.Event) -> bool:
        """Publish the settlement's events and acknowledge ids in one atomic step, if still ours.

        Return False, having done nothing, when this consumer no longer owns every one of ids.
        """
        settled, _ = await self.settle(ids, settlement, stop)
        return settled

    async def settle(
        self, ids: Sequence[str], settlement: Settlement, stop: asyncio.Event, *, read_next: int = 0
    ) -> tuple[bool, list[Entry]]:
        """ack_and_publish, and then, in the same script, read up to read_next new entries.

        Returns whether it settled, and the entries read (now delivered to this consumer, as
        XREADGROUP delivers them; none when it did not settle). Should the reply be lost, the
        retry finds the batch settled and reads nothing: what the lost reply carried stays
        pending, and a claim round hands it on after CLAIM_IDLE_MS.
        """
        if settlement.entries and not ids:
            raise ValueError(
                f"a handler returned {len(settlement.entries)} event(s) to publish but kept every entry "
                "of its batch: events belong to the entries they decide, so acknowledge those entries "
                "(leave them out of keep) or publish nothing"
            )
        # Two JSON arguments rather than one per id and field: redis-py's asyncio client packs
        # every argument in Python, which cost more than the script itself for 100 events.
        args = [
            self.group,
            self.name,
            "" if settlement.maxlen is None else settlement.maxlen,
            orjson.dumps(list(ids)),
            orjson.dumps(
                [[part for pair in fields.items() for part in pair] for fields in settlement.entries]
            ),
            max(0, read_next),
        ]
        reply: Any = await retry_outages(
            lambda: self._ack_and_publish_script(keys=[self.stream, settlement.stream], args=args),
            stop,
            on_outage=self._mark_down,
        )
        not_owned = int(reply[0])
        if not_owned > 0:
            self.log.info(
                "settle skipped: entries no longer this consumer's (settled by an earlier attempt, "
                "or claimed by another consumer); nothing published, nothing acknowledged",
                entries=len(ids),
                not_owned=not_owned,
                events=len(settlement.entries),
            )
            return False, []
        following = [
            (str(entry_id), _pairs(fields)) for entry_id, fields in (reply[1] if len(reply) > 1 else [])
        ]
        return True, following

    async def send_to_dead_letter(
        self, dead: Sequence[tuple[str, dict[str, str], str, int]], stop: asyncio.Event
    ) -> None:
        """Record each entry in `dead-letter` with its reason, then acknowledge it."""

        async def record_and_ack() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                for entry_id, fields, reason, count in dead:
                    letter = DeadLetter(
                        stream=self.stream,
                        entry_id=entry_id,
                        group=self.group,
                        error=reason[:2000],
                        deliveries=count,
                        fields={str(k): str(v)[:65536] for k, v in fields.items()},
                        signal_id=_signal_id_of(fields),
                    )
                    pipe.xadd(
                        self.dead_letter,
                        encode_entry(letter),  # type: ignore[arg-type]
                        maxlen=self.dead_letter_maxlen,
                        approximate=True,
                    )
                pipe.xack(self.stream, self.group, *[d[0] for d in dead])
                await pipe.execute()

        await retry_outages(record_and_ack, stop, on_outage=self._mark_down)
        self.health.dead_lettered += len(dead)
        for entry_id, fields, reason, count in dead:
            self.log.error(
                "entry sent to dead-letter",
                entry_id=entry_id,
                signal_id=_signal_id_of(fields),
                reason=reason[:500],
                deliveries=count,
            )

    async def claim_round(self, stop: asyncio.Event) -> int:
        """Claim entries idle longer than CLAIM_IDLE_MS; dead-letter the over-delivered; process the rest."""
        idle = self.settings.claim_idle_ms
        pending: Any = await self.redis.xpending_range(
            self.stream, self.group, min="-", max="+", count=self.settings.batch_size, idle=idle
        )
        if not pending:
            await self._forget_dead_consumers()
            return 0
        previous = {str(p["message_id"]): int(p["times_delivered"]) for p in pending}
        claimed: Any = await self.redis.xclaim(
            self.stream, self.group, self.name, min_idle_time=idle, message_ids=list(previous)
        )
        over: list[tuple[str, dict[str, str], str, int]] = []
        retry: list[Entry] = []
        present = set()
        for entry_id, fields in claimed:
            present.add(entry_id)
            if fields is None:
                continue
            if previous.get(entry_id, 0) >= self.settings.max_deliveries:
                reason = f"delivered {previous[entry_id]} times without success (MAX_DELIVERIES)"
                over.append((entry_id, fields, reason, previous[entry_id]))
            else:
                retry.append((entry_id, fields))
        gone = [i for i in previous if i not in present]
        if gone:
            await self.redis.xack(self.stream, self.group, *gone)
        if over:
            await self.send_to_dead_letter(over, stop)
        if retry:
            self.health.claimed += len(retry)
            self.log.info("claimed idle entries", entries=len(retry))
            await self.process(retry, {i: previous.get(i, 0) + 1 for i, _ in retry}, stop)
        return len(retry) + len(over)

    async def _forget_dead_consumers(self) -> None:
        # Idle twice the claim time with nothing pending: dead. A live consumer polls every
        # block_ms, so it is never that idle; if one were removed it reappears on its next read.
        threshold = max(self.settings.claim_idle_ms * 2, self.settings.block_ms * 3)
        for info in await self.redis.xinfo_consumers(self.stream, self.group):
            name = str(info.get("name"))
            if name == self.name or int(info.get("pending", 0)) > 0:
                continue
            if int(info.get("idle", 0)) > threshold:
                await self.redis.xgroup_delconsumer(self.stream, self.group, name)
                self.log.info("removed dead consumer", dead_consumer=name)


# Reset the idle time of the entries this consumer still owns (XCLAIM … JUSTID does not count
# a delivery); an entry another consumer has claimed meanwhile is left alone. Atomic as a script.
_RENEW_LEASE = """
local owned = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then owned[#owned + 1] = ARGV[i] end
end
if #owned > 0 then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(owned), 'JUSTID')
end
return #owned
"""


# Publish events and acknowledge entries at once, only if this consumer still owns every one
# of them: after a lost reply (already acked) or a claim (another consumer handles them, and
# publishes) it does nothing, so a retry or a claim never publishes an event twice.
# KEYS: the consumed stream, the target stream. ARGV: group, consumer, maxlen ('' for none),
# the ids as a JSON array, the entries as a JSON array of [name, value, name, value, …] arrays,
# how many new entries to read after acknowledging (0: none).
# Returns {not_owned}: how many ids this consumer does not own (nothing done), or {0} or
# {0, entries} once published and acknowledged, entries being what XREADGROUP … > read next
# (not blocking: a script cannot wait).
# A script is not rolled back when a command fails: XACK comes last, so a failed XADD acks nothing.
# Ownership: one XPENDING of this consumer's entries from the first id to the last (a batch is
# read in stream order, so that is usually all of them and nothing else); an id it does not list
# (ids out of order, or more of ours in between than it returned) is asked about on its own.
_ACK_AND_PUBLISH = """
local ids = cjson.decode(ARGV[4])
local not_owned = 0
if #ids > 0 then
  local mine = {}
  for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], ids[1], ids[#ids], #ids, ARGV[2])) do
    mine[p[1]] = true
  end
  for _, id in ipairs(ids) do
    if not mine[id] and #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) == 0 then
      not_owned = not_owned + 1
    end
  end
end
if not_owned > 0 then return {not_owned} end
local maxlen = ARGV[3]
for _, fields in ipairs(cjson.decode(ARGV[5])) do
  if maxlen ~= '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(fields))
  else
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  end
end
if #ids > 0 then redis.call('XACK', KEYS[1], ARGV[1], unpack(ids)) end
if tonumber(ARGV[6]) > 0 then
  local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[6], 'STREAMS', KEYS[1], '>')
  if read then return {0, read[1][2]} end
end
return {0}
"""


class _Lease:
    """Renew a batch's entries every `every` seconds while it is in hand, until end().

    A timer, not a task per batch: most batches end long before their first renewal, and a task
    with its timeout cost ~8 % of the orchestrator's CPU at 1,000 signals/s in batches of a few.
    A renewal is a task of its own, one at a time; end() cancels what is pending. A cancel that
    lands inside redis-py's command may be swallowed there: the renewal then finishes its one
    command and ends, as a renewal of acknowledged entries changes nothing.
    """

    def __init__(
        self, renew: Callable[[list[str]], Coroutine[Any, Any, None]], ids: list[str], every: float
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._renew, self._ids, self._every = renew, ids, every
        self._renewing: asyncio.Task[None] | None = None
        self._timer = self._loop.call_later(every, self._due)

    def _due(self) -> None:
        if self._renewing is None or self._renewing.done():
            self._renewing = self._loop.create_task(self._renew(self._ids))
        self._timer = self._loop.call_later(self._every, self._due)

    def end(self) -> None:
        self._timer.cancel()
        if self._renewing is not None:
            self._renewing.cancel()


def _pairs(fields: Sequence[str] | None) -> dict[str, str] | None:
    """An entry's [name, value, …] list as XREADGROUP replies parse it: a dict (None if deleted)."""
    if fields is None:
        return None
    return dict(zip(fields[::2], fields[1::2], strict=True))


async def _sleep_or_stop(stop: asyncio.Event | None, seconds: float) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def retry_outages(
    operation: Callable[[], Awaitable[T]],
    stop: asyncio.Event | None,
    *,
    on_outage: Callable[[BaseException], object] | None = None,
) -> T:
    """Run operation, retrying it with capped backoff while Redis or PostgreSQL is unreachable.

    Any other failure, or an outage once stop is set, is raised to the caller.
    """
    backoff = 0.1
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not is_transient(exc) or (stop is not None and stop.is_set()):
                raise
            if on_outage is not None:
                on_outage(exc)
            await _sleep_or_stop(stop, backoff)
            backoff = min(backoff * 2, 5.0)
