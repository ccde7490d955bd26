"""The watchdog: every WATCHDOG_INTERVAL_SECONDS, check the invariants, alert on a change, repair.

Each round asks invariants.recent_signals over the last WATCHDOG_WINDOW_HOURS with
WATCHDOG_GRACE_SECONDS of grace, then

* alerts on a transition only: "INVARIANT VIOLATION" (counts, up to ten signal ids) when
  the verdict turns to FAIL, "RESOLVED" when it turns back to PASS, nothing in between.
  The verdict lives in PostgreSQL (watchdog_state), changed under a row lock, and the
  notice is written to that row (an outbox) in the same transaction, then published on
  `notices`; a replica that finds an unpublished notice publishes it (same notice_id, the
  notifier sends it once). A round whose snapshot is older than the last change is not
  allowed to flip the verdict back. So a restart or a second diagnostics replica neither
  repeats nor loses an alert.
* repairs what is safe: a sent signal without a terminal intent is re-published on
  `signals` with its original event (kept on its message row; the orchestrator is
  idempotent by signal_id, so this can only create the missing intent); a failed order
  without its failure message, and a message row without its decision, get their
  intent's OrderDecided re-published on `order-decisions` (the notifier writes the
  decision and sends a failure message only when none is recorded). Each (signal, kind)
  is repaired at most WATCHDOG_MAX_REPAIRS times, at most once per max(grace, interval).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis

from services.diagnostics import invariants
from services.diagnostics.invariants import Window
from services.diagnostics.metrics import DiagnosticsMetrics
from services.diagnostics.models import VIOLATION_TYPES, RecentSignalsReport
from shared.consumer import publish
from shared.events import TERMINAL_STATUSES, NoticeKind, OperatorNotice, OrderDecided, SignalEmitted
from shared.logging import get_logger
from shared.settings import WatchdogSettings
from shared.streams import StreamNames

log = get_logger("intentflow.watchdog")

REPORT_LIMIT = 500
MAX_ALERT_IDS = 10
REPUBLISH_SIGNAL = "republish_signal"
REPUBLISH_DECISION = "republish_decision"
REPAIR_FOR = {
    "missing_intent": REPUBLISH_SIGNAL,
    "failed_without_telegram": REPUBLISH_DECISION,
    "null_decisions": REPUBLISH_DECISION,
}
OUTCOMES = ("total_signals", "placed", "failed", "dedup", "blocked", "in_flight")


def transition(violating_before: bool, report: RecentSignalsReport) -> NoticeKind | None:
    """Return the notice a verdict change calls for: an alert, RESOLVED, or None (no change)."""
    if not report.passed and not violating_before:
        return NoticeKind.INVARIANT_VIOLATION
    if report.passed and violating_before:
        return NoticeKind.RESOLVED
    return None


def violation_ids(report: RecentSignalsReport) -> list[str]:
    """The distinct signal ids of the report's violations, newest first."""
    seen: dict[str, None] = {}
    for v in report.violations:
        if v.signal_id is not None:
            seen.setdefault(str(v.signal_id), None)
    return list(seen)


def notice_for(kind: NoticeKind, report: RecentSignalsReport) -> OperatorNotice:
    """Build the alert or RESOLVED notice of a report."""
    counts = report.counts
    if kind is NoticeKind.INVARIANT_VIOLATION:
        return OperatorNotice(
            kind=kind,
            counts={name: getattr(counts, name) for name in VIOLATION_TYPES},
            signal_ids=violation_ids(report)[:MAX_ALERT_IDS],
            hours=report.hours,
        )
    return OperatorNotice(
        kind=kind, counts={name: getattr(counts, name) for name in OUTCOMES}, hours=report.hours
    )


def repair_plan(report: RecentSignalsReport) -> dict[str, list[uuid.UUID]]:
    """Group the report's violating signals by the repair each needs (one entry per signal and repair)."""
    plan: dict[str, dict[uuid.UUID, None]] = {REPUBLISH_SIGNAL: {}, REPUBLISH_DECISION: {}}
    for v in report.violations:
        if v.signal_id is None:
            continue
        plan[REPAIR_FOR[v.type]].setdefault(uuid.UUID(str(v.signal_id)), None)
    return {kind: list(ids) for kind, ids in plan.items()}


@dataclass(frozen=True)
class RoundResult:
    """What one round saw and did."""

    report: RecentSignalsReport
    notice: OperatorNotice | None
    repaired: dict[str, list[uuid.UUID]] = field(default_factory=dict)


@dataclass
class Watchdog:
    """Check, alert, repair; `pool` returns the ready pool, or None while PostgreSQL is not."""

    pool: Callable[[], asyncpg.Pool | None]
    redis: Redis
    names: StreamNames
    settings: WatchdogSettings
    metrics: DiagnosticsMetrics | None = None
    maxlen: int | None = None
    _reported: set[tuple[str, uuid.UUID]] = field(default_factory=set, init=False)

    @property
    def state_name(self) -> str:
        return f"{self.names.prefix}invariants"

    @property
    def window(self) -> Window:
        s = self.settings
        return Window(
            hours=s.watchdog_window_hours, limit=REPORT_LIMIT, grace_seconds=s.watchdog_grace_seconds
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run a round every WATCHDOG_INTERVAL_SECONDS until stop is set; a failed round is logged, not fatal."""
        interval = self.settings.watchdog_interval_seconds
        log.info(
            "watchdog started",
            interval_s=interval,
            window_h=self.window.hours,
            grace_s=self.window.grace_seconds,
        )
        while not stop.is_set():
            pool = self.pool()
            if pool is not None:
                try:
                    await self.round(pool)
                except Exception as exc:
                    if self.metrics is not None:
                        self.metrics.watchdog_errors.inc()
                    log.warning(
                        "watchdog round failed; next round retries", error=f"{type(exc).__name__}: {exc}"
                    )
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    async def round(self, pool: asyncpg.Pool) -> RoundResult:
        """Check the invariants once; alert on a change of verdict; repair what is safe to repair."""
        report = await invariants.recent_signals(pool, self.window)
        notice = await self._record_verdict(pool, report)
        await self.flush_outbox(pool)
        repaired = await self.repair(pool, report)
        if self.metrics is not None:
            self.metrics.record_watchdog_round(report)
        return RoundResult(report, notice, repaired)

    async def _record_verdict(self, pool: asyncpg.Pool, report: RecentSignalsReport) -> OperatorNotice | None:
        """Change the shared verdict if this report calls for it, writing the notice to the outbox."""
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO watchdog_state (name, violating, changed_at) VALUES ($1, false, 'epoch')"
                " ON CONFLICT (name) DO NOTHING",
                self.state_name,
            )
            state = await conn.fetchrow(
                "SELECT violating, changed_at FROM watchdog_state WHERE name = $1 FOR UPDATE", self.state_name
            )
            assert state is not None
            kind = transition(state["violating"], report)
            if kind is None:
                return None
            if report.summary.generated_at <= state["changed_at"]:
                # Another replica changed the verdict after this report's snapshot: this one is stale.
                return None
            notice = notice_for(kind, report)
            await conn.execute(
                "UPDATE watchdog_state SET violating = $2, seq = seq + 1, announced = $3, notice = $4,"
                " notice_published = false, changed_at = clock_timestamp() WHERE name = $1",
                self.state_name,
                kind is NoticeKind.INVARIANT_VIOLATION,
                violation_ids(report),
                notice.model_dump(mode="json"),
            )
        log.warning(
            "invariants violated" if kind is NoticeKind.INVARIANT_VIOLATION else "invariants hold again",
            notice_id=str(notice.notice_id),
            counts=notice.counts,
            signal_ids=notice.signal_ids,
        )
        if self.metrics is not None:
            self.metrics.watchdog_alerts.labels(kind.value).inc()
        return notice

    async def flush_outbox(self, pool: asyncpg.Pool) -> OperatorNotice | None:
        """Publish the verdict's notice if no replica has yet; return it when published now.

        The row stays locked while publishing, so two replicas never both publish it; a
        replica that dies after publishing but before committing leaves it to be published
        again, which the notifier absorbs (it sends each notice_id once).
        """
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT seq, notice FROM watchdog_state"
                " WHERE name = $1 AND NOT notice_published AND notice IS NOT NULL FOR UPDATE SKIP LOCKED",
                self.state_name,
            )
            if row is None:
                return None
            notice = OperatorNotice.model_validate(row["notice"])
            await publish(self.redis, self.names.notices, notice, maxlen=self.maxlen)
            await conn.execute(
                "UPDATE watchdog_state SET notice_published = true WHERE name = $1 AND seq = $2",
                self.state_name,
                row["seq"],
            )
        log.info("operator notice published", notice_id=str(notice.notice_id), kind=notice.kind.value)
        return notice

    async def repair(self, pool: asyncpg.Pool, report: RecentSignalsReport) -> dict[str, list[uuid.UUID]]:
        """Re-publish what each violating signal needs, within the repair limits; return what was re-published."""
        plan = repair_plan(report)
        done: dict[str, list[uuid.UUID]] = {}
        signals = await self._signal_events(pool, plan[REPUBLISH_SIGNAL])
        decisions = await self._decisions(pool, plan[REPUBLISH_DECISION])
        claimed = await self._claim(
            pool, {REPUBLISH_SIGNAL: list(signals), REPUBLISH_DECISION: list(decisions)}
        )
        for kind, signal_id, attempts in claimed:
            event: SignalEmitted | OrderDecided
            if kind == REPUBLISH_SIGNAL:
                event, stream = signals[signal_id], self.names.signals
            else:
                event, stream = decisions[signal_id], self.names.order_decisions
            entry_id = await publish(self.redis, stream, event, maxlen=self.maxlen)
            done.setdefault(kind, []).append(signal_id)
            if self.metrics is not None:
                self.metrics.watchdog_repairs.labels(kind).inc()
            log.warning(
                "watchdog repair: re-published the event",
                repair=kind,
                signal_id=str(signal_id),
                stream=stream,
                entry_id=entry_id,
                attempt=attempts,
                max_attempts=self.settings.watchdog_max_repairs,
            )
        return done

    async def _signal_events(
        self, pool: asyncpg.Pool, signal_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, SignalEmitted]:
        """Rebuild each signal's SignalEmitted from its message row; log the ones that cannot be."""
        if not signal_ids:
            return {}
        rows = await pool.fetch(
            "SELECT signal_id, context_json -> 'event' AS event FROM telegram_messages"
            " WHERE kind = 'SIGNAL' AND signal_id = ANY($1::uuid[])",
            list(signal_ids),
        )
        out: dict[uuid.UUID, SignalEmitted] = {}
        for row in rows:
            event = _decode(row["event"])
            try:
                out[row["signal_id"]] = SignalEmitted.model_validate(event)
            except ValueError as exc:
                self._unrepairable(
                    REPUBLISH_SIGNAL, row["signal_id"], f"no valid event on its message row: {exc}"
                )
        for missing in set(signal_ids) - set(out) - {r["signal_id"] for r in rows}:
            self._unrepairable(REPUBLISH_SIGNAL, missing, "no SIGNAL message row")
        return out

    async def _decisions(
        self, pool: asyncpg.Pool, signal_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, OrderDecided]:
        """Rebuild each terminal intent's OrderDecided from its order_intents row."""
        if not signal_ids:
            return {}
        rows = await pool.fetch(
            "SELECT id AS intent_id, signal_id, symbol, side, status, decision_type, reason_code,"
            " coalesce(reason_message, '') AS reason_message, exchange_order_id,"
            " coalesce(decided_at, updated_at) AS decided_at"
            " FROM order_intents WHERE signal_id = ANY($1::uuid[]) AND status = ANY($2::text[])",
            list(signal_ids),
            list(TERMINAL_STATUSES),
        )
        out: dict[uuid.UUID, OrderDecided] = {}
        for row in rows:
            try:
                out[row["signal_id"]] = OrderDecided.model_validate(dict(row))
            except ValueError as exc:
                self._unrepairable(
                    REPUBLISH_DECISION, row["signal_id"], f"its intent has no valid decision: {exc}"
                )
        return out

    async def _claim(
        self, pool: asyncpg.Pool, wanted: dict[str, list[uuid.UUID]]
    ) -> list[tuple[str, uuid.UUID, int]]:
        """Count one more attempt for each (kind, signal) still under the limit and not tried too recently."""
        pairs = [(kind, sid) for kind, ids in wanted.items() for sid in ids]
        if not pairs:
            return []
        spacing = max(float(self.settings.watchdog_grace_seconds), self.settings.watchdog_interval_seconds)
        rows = await pool.fetch(
            "INSERT INTO watchdog_repairs (signal_id, kind, attempts)"
            " SELECT s, k, 1 FROM unnest($1::uuid[], $2::text[]) AS u(s, k)"
            " ON CONFLICT (signal_id, kind) DO UPDATE"
            "  SET attempts = watchdog_repairs.attempts + 1, last_at = now()"
            "  WHERE watchdog_repairs.attempts < $3"
            "    AND watchdog_repairs.last_at < now() - $4::float8 * interval '1 second'"
            " RETURNING kind, signal_id, attempts",
            [sid for _, sid in pairs],
            [kind for kind, _ in pairs],
            self.settings.watchdog_max_repairs,
            spacing,
        )
        return [(r["kind"], r["signal_id"], int(r["attempts"])) for r in rows]

    def _unrepairable(self, kind: str, signal_id: uuid.UUID, why: str) -> None:
        # Said once per process and signal: the violation itself stays in the alert and the API.
        if (kind, signal_id) in self._reported:
            return
        self._reported.add((kind, signal_id))
        if self.metrics is not None:
            self.metrics.watchdog_unrepairable.labels(kind).inc()
        log.error(
            "watchdog cannot repair this signal", repair=kind, signal_id=str(signal_id), reason=why[:300]
        )


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        import json

        return json.loads(value)
    return value
