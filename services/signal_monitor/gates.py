"""The one way a validated signal is sent: duplicate check, gates, then publish-once.

The strategy engine, the webhook and `intentflow publish` all call `SignalGate.submit`:

1. a `signal_id` already published is answered as a duplicate (nothing new is sent, and
   the gates are not consulted, so a retried call is never mistaken for a new signal);
2. the gates (kill switch, the symbol's `alert_enabled`, the throttle of its
   (symbol, side, strategy)) decide, and a pass is recorded in Redis atomically;
3. the signal is appended to `signals` by `publish_signal` (atomic, once per signal_id).

A Redis error in steps 1-2 surfaces at once (nothing was recorded, the caller retries
the whole call). Once the gates have passed, publishing is retried for `retry_for`
seconds, because a retry of the whole call would then be held back by the cooldown the
pass just recorded.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.signal_monitor.throttle import Candidate, GateDecision, ThrottleStateStore, ThrottleStore
from services.signal_monitor.watchlist import Watchlist, WatchlistError, load_watchlist
from shared.events import SignalEmitted, utcnow
from shared.logging import get_logger
from shared.publishing import publish_signal, seen_key
from shared.settings import Settings, SettingsError
from shared.streams import StreamNames

log = get_logger("intentflow.signal_monitor")

PUBLISH_BACKOFF_START_S = 0.1
PUBLISH_BACKOFF_CAP_S = 2.0


class Result(StrEnum):
    PUBLISHED = "published"
    DUPLICATE = "already_published"
    HELD = "held"


@dataclass(frozen=True)
class Outcome:
    """What became of a submitted signal."""

    signal: SignalEmitted
    result: Result
    entry_id: str | None = None
    gate: GateDecision | None = None

    @property
    def signal_id(self) -> str:
        return str(self.signal.signal_id)

    @property
    def published(self) -> bool:
        """Tell whether this call appended a new entry to `signals`."""
        return self.result is Result.PUBLISHED


class PublishUnavailable(RuntimeError):
    """Redis did not take the signal; nothing was sent and the caller should retry."""


def load_configured_watchlist(settings: Settings) -> Watchlist:
    """Load WATCHLIST_FILE, or return the empty watchlist when it is unset."""
    path: Path | None = settings.signal_monitor.watchlist_file
    if path is None:
        return Watchlist.empty()
    try:
        return load_watchlist(path)
    except WatchlistError as exc:
        raise SettingsError(f"WATCHLIST_FILE: {exc}") from None


class SignalGate:
    """Duplicate check, gates and publish-once for one stream, under one watchlist."""

    def __init__(
        self,
        redis: Redis,
        *,
        watchlist: Watchlist,
        names: StreamNames,
        kill_switch: bool = False,
        maxlen: int = 1_000_000,
        store: ThrottleStateStore | None = None,
    ) -> None:
        self.redis = redis
        self.watchlist = watchlist
        self.names = names
        self.kill_switch = kill_switch
        self.maxlen = maxlen
        self.store: ThrottleStateStore = store or ThrottleStore(redis, prefix=names.prefix)

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis, watchlist: Watchlist) -> SignalGate:
        """Build the gate the settings describe (stream prefix, maxlen, kill switch)."""
        return cls(
            redis,
            watchlist=watchlist,
            names=StreamNames(settings.runtime.stream_prefix),
            kill_switch=settings.signal_monitor.signal_kill_switch,
            maxlen=settings.runtime.stream_maxlen,
        )

    async def already_published(self, signal: SignalEmitted) -> str | None:
        """Return the entry id under which this signal_id was published, or None."""
        found = await self.redis.get(seen_key(self.names.prefix, str(signal.signal_id)))
        return None if found is None else str(found)

    async def submit(
        self,
        signal: SignalEmitted,
        *,
        now: datetime | None = None,
        retry_for: float = 3.0,
        stop: asyncio.Event | None = None,
    ) -> Outcome:
        """Send `signal` unless it is a duplicate or a gate holds it; `now` clocks the throttle.

        Raises RedisError when Redis fails before the gates pass, PublishUnavailable when
        it keeps failing for `retry_for` seconds after they passed (or once `stop` is set).
        """
        now = now or utcnow()
        bound = log.bind(signal_id=str(signal.signal_id), symbol=signal.symbol, side=signal.side.value)
        entry = await self.already_published(signal)
        if entry is not None:
            bound.info("signal already published: nothing new sent", entry_id=entry)
            return Outcome(signal, Result.DUPLICATE, entry_id=entry)
        rules = self.watchlist.gate_rules(signal.symbol, signal.strategy, kill_switch=self.kill_switch)
        decision = await self.store.try_pass(Candidate.of(signal), rules, now)
        if not decision.allowed:
            bound.info(
                "signal held back by a gate",
                gate=decision.code.value,
                reason=decision.reason,
                strategy=signal.strategy,
                source=signal.source.value,
            )
            return Outcome(signal, Result.HELD, gate=decision)
        new, entry_id = await self._publish(signal, retry_for, stop)
        if not new:
            bound.info("signal already published: nothing new sent", entry_id=entry_id)
            return Outcome(signal, Result.DUPLICATE, entry_id=entry_id, gate=decision)
        bound.info(
            "signal published",
            entry_id=entry_id,
            price=str(signal.price),
            strategy=signal.strategy,
            source=signal.source.value,
        )
        return Outcome(signal, Result.PUBLISHED, entry_id=entry_id, gate=decision)

    async def _publish(
        self, signal: SignalEmitted, retry_for: float, stop: asyncio.Event | None
    ) -> tuple[bool, str]:
        deadline = time.monotonic() + retry_for if math.isfinite(retry_for) else math.inf
        delay = PUBLISH_BACKOFF_START_S
        while True:
            try:
                return await publish_signal(
                    self.redis, self.names.signals, signal, prefix=self.names.prefix, maxlen=self.maxlen
                )
            except RedisError as exc:
                if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                    log.error(
                        "signal passed the gates but Redis did not take it",
                        signal_id=str(signal.signal_id),
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    raise PublishUnavailable(
                        f"Redis did not take signal {signal.signal_id}: {type(exc).__name__}: {exc}"
                    ) from exc
                log.warning(
                    "publishing failed, retrying",
                    signal_id=str(signal.signal_id),
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 2),
                )
                await sleep_unless(stop, delay)
                delay = min(delay * 2, PUBLISH_BACKOFF_CAP_S)


async def sleep_unless(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
