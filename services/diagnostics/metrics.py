"""Prometheus gauges of the invariants and the streams, refreshed on each scrape.

Each app instance owns its CollectorRegistry (no global registry), so tests and several
apps in one process never share or collide on metrics.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from services.diagnostics.invariants import Window
from services.diagnostics.models import VIOLATION_TYPES, Counts, RecentSignalsReport, StreamsReport

# The operator's question is "the last 12 hours"; a scrape answers it over the same window.
METRICS_WINDOW = Window(hours=12, limit=1, grace_seconds=60)
# Scrapes closer together than this reuse the previous figures instead of querying again.
MIN_REFRESH_SECONDS = 1.0

CONTENT_TYPE = CONTENT_TYPE_LATEST


class DiagnosticsMetrics:
    """The diagnostics gauges in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        hours = METRICS_WINDOW.hours
        self.violations = Gauge(
            "intentflow_diagnostics_violations",
            f"Invariant violations over the last {hours} hours, by type",
            ["type"],
            registry=r,
        )
        self.counts = Gauge(
            "intentflow_diagnostics_signals",
            f"Sent signals over the last {hours} hours, by outcome (the counts of §7)",
            ["count"],
            registry=r,
        )
        self.passed = Gauge(
            "intentflow_diagnostics_pass",
            "1 when no invariant is violated, 0 when one is, NaN when unknown",
            registry=r,
        )
        self.stream_length = Gauge("intentflow_stream_length", "Entries in a stream", ["stream"], registry=r)
        self.lag = Gauge(
            "intentflow_stream_group_lag",
            "Entries of a stream not yet delivered to a consumer group",
            ["stream", "group"],
            registry=r,
        )
        self.pending = Gauge(
            "intentflow_stream_group_pending",
            "Entries delivered to a consumer group and not yet acknowledged",
            ["stream", "group"],
            registry=r,
        )
        self.oldest_idle = Gauge(
            "intentflow_stream_group_oldest_pending_idle_seconds",
            "Idle time of a group's oldest pending entry",
            ["stream", "group"],
            registry=r,
        )
        self.dead_letter = Gauge(
            "intentflow_dead_letter_length", "Entries in the dead-letter stream", registry=r
        )
        self.undelivered = Gauge(
            "intentflow_telegram_undelivered_messages",
            "telegram_messages rows with blocked = true",
            registry=r,
        )
        self.check_up = Gauge(
            "intentflow_diagnostics_check_up",
            "1 when a dependency answers (redis, postgres, schema), else 0",
            ["check"],
            registry=r,
        )
        self.watchdog_rounds = Counter(
            "intentflow_watchdog_rounds", "Watchdog rounds completed by this process", registry=r
        )
        self.watchdog_errors = Counter(
            "intentflow_watchdog_round_errors",
            "Watchdog rounds that failed (PostgreSQL or Redis down)",
            registry=r,
        )
        self.watchdog_violations = Gauge(
            "intentflow_watchdog_violations",
            "Invariant violations the watchdog saw in its last round, by type",
            ["type"],
            registry=r,
        )
        self.watchdog_violating = Gauge(
            "intentflow_watchdog_violating", "1 when the watchdog's last round found a violation", registry=r
        )
        self.watchdog_last_round = Gauge(
            "intentflow_watchdog_last_round_timestamp_seconds",
            "When the watchdog's last round completed (Unix time)",
            registry=r,
        )
        self.watchdog_alerts = Counter(
            "intentflow_watchdog_alerts",
            "Verdict changes this process announced, by notice kind (INVARIANT_VIOLATION, RESOLVED)",
            ["kind"],
            registry=r,
        )
        self.watchdog_repairs = Counter(
            "intentflow_watchdog_repairs",
            "Events the watchdog re-published to repair a violation, by repair",
            ["repair"],
            registry=r,
        )
        self.watchdog_unrepairable = Counter(
            "intentflow_watchdog_unrepairable",
            "Violating signals the watchdog could not repair (no event to re-publish), by repair",
            ["repair"],
            registry=r,
        )
        self._lock = asyncio.Lock()
        self._refreshed_at = -math.inf

    def record_report(self, report: RecentSignalsReport | None) -> None:
        """Set the invariant gauges from a report; None (unknown) clears them."""
        self.violations.clear()
        self.counts.clear()
        if report is None:
            self.passed.set(math.nan)
            return
        for name in Counts.model_fields:
            self.counts.labels(name).set(getattr(report.counts, name))
        for kind in VIOLATION_TYPES:
            self.violations.labels(kind).set(getattr(report.counts, kind))
        self.passed.set(1 if report.passed else 0)

    def record_watchdog_round(self, report: RecentSignalsReport) -> None:
        """Set the watchdog gauges from the report of the round just completed."""
        self.watchdog_rounds.inc()
        for kind in VIOLATION_TYPES:
            self.watchdog_violations.labels(kind).set(getattr(report.counts, kind))
        self.watchdog_violating.set(0 if report.passed else 1)
        self.watchdog_last_round.set(time.time())

    def record_streams(self, report: StreamsReport | None) -> None:
        """Set the stream gauges from a streams report; None (unknown) clears them."""
        for gauge in (self.stream_length, self.lag, self.pending, self.oldest_idle):
            gauge.clear()
        if report is None:
            self.dead_letter.set(math.nan)
            self.undelivered.set(math.nan)
            return
        for stream, health in report.streams.items():
            self.stream_length.labels(stream).set(health.length)
            for group in health.groups:
                self.pending.labels(stream, group.name).set(group.pending)
                self.lag.labels(stream, group.name).set(group.lag)
                idle = group.oldest_pending_idle_ms
                self.oldest_idle.labels(stream, group.name).set(0 if idle is None else idle / 1000)
        self.dead_letter.set(report.dead_letter_length)
        self.undelivered.set(report.undelivered_telegram_messages)

    def record_checks(self, checks: dict[str, bool]) -> None:
        """Set one up/down gauge per dependency check."""
        for name, ok in checks.items():
            self.check_up.labels(name).set(1 if ok else 0)

    async def scrape(self, refresh: Callable[[DiagnosticsMetrics], Awaitable[None]]) -> bytes:
        """Refresh the gauges (unless just refreshed) and render them in the text format."""
        async with self._lock:
            if time.monotonic() - self._refreshed_at >= MIN_REFRESH_SECONDS:
                await refresh(self)
                self._refreshed_at = time.monotonic()
        return generate_latest(self.registry)
