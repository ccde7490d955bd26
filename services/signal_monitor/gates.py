"""The one way a validated signal is sent: duplicate check, gates, then publish-once.

The strategy engine, the webhook and `intentflow publish` all call `SignalGate.submit`:

1. a `signal_id` already published is answered as a duplicate (nothing new is sent, and
   the gates are not consulted, so a retried call is never mistaken for a new signal);
2. the gates (kill switch, the symbol's `alert_enabled`, the throttle of its
   (symbol, side, strategy)) decide;
3. a signal they pass is appended to `signals` and its pass recorded in the throttle in
   one atomic step (`publish_signal`: once per signal_id, and only while the
   throttle still holds what the gates decided on; otherwise they decide again).

A pass is recorded only with the signal it let through, so a call that failed sent nothing
and recorded nothing: trying it again (the same signal_id) decides afresh, never held back
by a cooldown of its own. While Redis fails, the three steps are tried again together for
`retry_for` seconds.
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

from services.signal_monitor.throttle import Candidate, GateDecision, GateRules, ThrottleStore
from services.signal_monitor.watchlist import Watchlist, WatchlistError, load_watchlist
from shared.events import SignalEmitted, utcnow
from shared.logging import get_logger
from shared.publishing import ThrottleSwap, publish_signal, seen_key
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
        store: ThrottleStore | None = None,
    ) -> None:
        self.redis = redis
        self.watchlist = watchlist
        self.names = names
        self.kill_switch = kill_switch
        self.maxlen = maxlen
        self.store = store or ThrottleStore(redis, prefix=names.prefix)

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

        While Redis fails, the whole of it is tried again for `retry_for` seconds (duplicate
        check first, so a send whose answer was lost is found sent); then, or once `stop` is
        set, PublishUnavailable: nothing was sent and nothing recorded, and the caller may try
        the same signal again.
        """
        now = now or utcnow()
        rules = self.watchlist.gate_rules(signal.symbol, signal.strategy, kill_switch=self.kill_switch)
        deadline = time.monotonic() + retry_for if math.isfinite(retry_for) else math.inf
        delay = PUBLISH_BACKOFF_START_S
        while True:
            try:
                outcome = await self._submit_once(signal, rules, now)
                break
            except RedisError as exc:
                if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                    log.error(
                        "signal not sent: Redis did not take it",
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
        _log_outcome(outcome)
        return outcome

    async def _submit_once(self, signal: SignalEmitted, rules: GateRules, now: datetime) -> Outcome:
        entry = await self.already_published(signal)
        if entry is not None:
            return Outcome(signal, Result.DUPLICATE, entry_id=entry)

        async def send(swap: ThrottleSwap) -> tuple[bool, str] | None:
            return await publish_signal(
                self.redis, self.names.signals, signal, swap, prefix=self.names.prefix, maxlen=self.maxlen
            )

        decision, sent = await self.store.pass_and_send(Candidate.of(signal), rules, now, send)
        if sent is None:
            return Outcome(signal, Result.HELD, gate=decision)
        new, entry_id = sent
        return Outcome(
            signal, Result.PUBLISHED if new else Result.DUPLICATE, entry_id=entry_id, gate=decision
        )


def _log_outcome(outcome: Outcome) -> None:
    signal = outcome.signal
    bound = log.bind(signal_id=str(signal.signal_id), symbol=signal.symbol, side=signal.side.value)
    if outcome.result is Result.DUPLICATE:
        bound.info("signal already published: nothing new sent", entry_id=outcome.entry_id)
    elif outcome.result is Result.HELD:
        assert outcome.gate is not None
        bound.info(
            "signal held back by a gate",
            gate=outcome.gate.code.value,
            reason=outcome.gate.reason,
            strategy=signal.strategy,
            source=signal.source.value,
        )
    else:
        bound.info(
            "signal published",
            entry_id=outcome.entry_id,
            price=str(signal.price),
            strategy=signal.strategy,
            source=signal.source.value,
        )


async def sleep_unless(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
