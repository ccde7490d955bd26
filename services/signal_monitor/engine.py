"""The strategy engine: one task per active watchlist entry, candles in, gated signals out.

Each task reads its symbol's candles from the feed, pushes them through the entry's
`StrategyRunner`, and submits every BUY/SELL it fires to the `SignalGate`. The throttle is
clocked by the candle's time (a replay is deterministic whatever its speed); `emitted_at`
is the wall clock, the moment the signal is actually sent.

A feed that ends (a replay at the end of its file) ends its task; a feed that fails
with a FeedError (a symbol the exchange does not list) ends its task with an error
logged; any other feed failure restarts the entry after a backoff. Redis being down
holds the task on its signal, retrying with backoff, so no signal is skipped. On stop,
a task waiting for candles is cancelled at once; a task with a signal in hand is given
STOP_GRACE_S to send it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from services.signal_monitor.feeds import Candle, Feed, FeedError, ReplayFeed
from services.signal_monitor.gates import PublishUnavailable, Result, SignalGate, sleep_unless
from services.signal_monitor.strategy import StrategyRunner
from services.signal_monitor.watchlist import WatchEntry, Watchlist
from shared.events import Side, SignalEmitted, Source, describe_errors, utcnow
from shared.logging import get_logger

log = get_logger("intentflow.signal_monitor.engine")

STOP_GRACE_S = 5.0
REDIS_BACKOFF_START_S = 0.2
REDIS_BACKOFF_CAP_S = 5.0
FEED_BACKOFF_START_S = 1.0
FEED_BACKOFF_CAP_S = 60.0


@dataclass
class EntryStats:
    """What one entry's task has done so far."""

    candles: int = 0
    fired: int = 0
    published: int = 0
    held: int = 0
    duplicates: int = 0
    unsent: int = 0
    finished: bool = False
    error: str | None = None


def entry_label(entry: WatchEntry) -> str:
    """Name an entry in logs and stats: `SYMBOL strategy`."""
    return f"{entry.symbol} {entry.strategy.name}"


class Engine:
    """Run every active entry of a watchlist over one feed until the feeds end or stop is set."""

    def __init__(
        self,
        watchlist: Watchlist,
        feed: Feed | None,
        gate: SignalGate,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.watchlist = watchlist
        self.feed = feed
        self.gate = gate
        self.clock = clock
        self.entries = watchlist.active() if feed is not None else ()
        self.stats: dict[str, EntryStats] = {entry_label(e): EntryStats() for e in self.entries}
        self.done = asyncio.Event()
        self._busy: set[str] = set()

    def status(self) -> dict[str, object]:
        """Summarise the engine for /healthz: entries, and which have finished."""
        return {
            "entries": len(self.entries),
            "running": sum(1 for s in self.stats.values() if not s.finished),
            "stats": {label: asdict(s) for label, s in self.stats.items()},
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Run one task per active entry; return when all have ended or `stop` is set."""
        if not self.entries:
            if self.watchlist.entries:
                log.info("no enabled watchlist entries: the engine emits nothing (webhook and manual only)")
            self.done.set()
            return
        tasks = {
            label: asyncio.create_task(self._run_entry(entry, stop), name=f"engine {label}")
            for label, entry in zip(self.stats, self.entries, strict=True)
        }
        log.info("engine started", entries=list(tasks))
        stopping = asyncio.create_task(stop.wait())
        try:
            pending: set[asyncio.Future[Any]] = set(tasks.values())
            while pending and not stop.is_set():
                _, pending = await asyncio.wait({*pending, stopping}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(stopping)
            if pending:
                await self._stop_tasks(tasks)
        finally:
            stopping.cancel()
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            self.done.set()
            log.info("engine stopped" if stop.is_set() else "engine finished: every entry has ended")

    async def _stop_tasks(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        busy = []
        for label, task in tasks.items():
            if label in self._busy:
                busy.append(task)
            else:
                task.cancel()
        if busy:
            _, late = await asyncio.wait(busy, timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()

    async def _run_entry(self, entry: WatchEntry, stop: asyncio.Event) -> None:
        label = entry_label(entry)
        stats = self.stats[label]
        backoff = FEED_BACKOFF_START_S
        try:
            while not stop.is_set():
                try:
                    await self._follow(entry, label, stats, stop)
                except FeedError as exc:
                    stats.error = str(exc)
                    log.error("feed failed: this entry stops", entry=label, error=str(exc))
                    return
                except Exception as exc:  # a bug or an unforeseen feed error must not end the service
                    stats.error = f"{type(exc).__name__}: {exc}"
                    log.exception("feed failed: restarting this entry", entry=label, retry_in_s=backoff)
                    await sleep_unless(stop, backoff)
                    backoff = min(backoff * 2, FEED_BACKOFF_CAP_S)
                    continue
                if not stop.is_set():
                    kind = (
                        "replay reached the end of its file"
                        if isinstance(self.feed, ReplayFeed)
                        else "feed ended"
                    )
                    log.info(f"{kind}: this entry stops", entry=label, **_counts(stats))
                return
        finally:
            stats.finished = True

    async def _follow(self, entry: WatchEntry, label: str, stats: EntryStats, stop: asyncio.Event) -> None:
        assert self.feed is not None
        runner = StrategyRunner(entry.strategy)
        async for candle in self.feed.candles(entry.symbol):
            stats.candles += 1
            side = runner.push(candle)
            if side is None:
                continue
            stats.fired += 1
            self._busy.add(label)
            try:
                await self._send(entry, candle, side, stats, stop)
            finally:
                self._busy.discard(label)
            if stop.is_set():
                return

    async def _send(
        self, entry: WatchEntry, candle: Candle, side: Side, stats: EntryStats, stop: asyncio.Event
    ) -> None:
        try:
            signal = SignalEmitted(
                signal_id=uuid.uuid4(),
                symbol=entry.symbol,
                side=side,
                price=candle.close,
                strategy=entry.strategy.name,
                source=Source.STRATEGY,
                emitted_at=self.clock(),
            )
        except ValidationError as exc:
            stats.unsent += 1
            log.warning(
                "strategy signal is not a valid signal: skipped",
                entry=entry_label(entry),
                candle_ts=candle.ts.isoformat(),
                error=describe_errors(exc),
            )
            return
        delay = REDIS_BACKOFF_START_S
        while True:
            try:
                outcome = await self.gate.submit(signal, now=candle.ts, retry_for=math.inf, stop=stop)
                break
            except (RedisError, PublishUnavailable, OSError) as exc:
                if stop.is_set():
                    stats.unsent += 1
                    log.error(
                        "stopping with a signal unsent: Redis unavailable",
                        signal_id=str(signal.signal_id),
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    return
                log.warning(
                    "Redis unavailable: retrying the signal",
                    signal_id=str(signal.signal_id),
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 2),
                )
                await sleep_unless(stop, delay)
                delay = min(delay * 2, REDIS_BACKOFF_CAP_S)
            except ValueError as exc:  # unreadable throttle state: skip this signal, keep the entry
                stats.unsent += 1
                log.error(
                    "signal not sent: throttle state unreadable",
                    signal_id=str(signal.signal_id),
                    error=str(exc),
                )
                return
        if outcome.result is Result.PUBLISHED:
            stats.published += 1
        elif outcome.result is Result.HELD:
            stats.held += 1
        else:
            stats.duplicates += 1


def _counts(stats: EntryStats) -> dict[str, int]:
    return {
        "candles": stats.candles,
        "fired": stats.fired,
        "published": stats.published,
        "held": stats.held,
    }


async def close_feed(feed: Feed | None) -> None:
    """Close a feed, logging (not raising) a failure to do so."""
    if feed is None:
        return
    with contextlib.suppress(Exception):
        await feed.close()
