"""The §7 invariants as SQL: counts over the whole window, newest-first lists cut at `limit`.

Definitions (CONTRACT §7), keyed on telegram_messages rows, never on Telegram message ids
(one Telegram message may carry several signals, each with its own row):

* sent signal: a row with blocked = false whose message contains "BUY SIGNAL" or
  "SELL SIGNAL", its `timestamp` within the last `hours`;
* missing_intent: a sent signal older than grace with no order_intents row of its
  signal_id in a terminal status (younger ones are in_flight);
* null_decisions: a sent signal older than grace whose row has a NULL decision_type or
  reason_code;
* failed_without_telegram: an ORDER_FAILED intent whose decision time
  (decided_at, else updated_at) lies within the last `hours` and is older than grace,
  with no unblocked row of its signal_id containing "ORDER FAILED" timestamped within
  ±5 minutes (inclusive) of that decision time. The window applies to the decision time
  because that is when the failure message became due.

placed/failed/dedup/blocked/in_flight/missing_intent partition total_signals by the
status of each sent signal's intent. Every query runs in one read-only repeatable-read
transaction, so all parts see one snapshot and one now().
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.diagnostics.models import (
    Counts,
    RecentSignalsReport,
    SignalItem,
    Summary,
    Violation,
)
from shared.events import TERMINAL_STATUSES
from shared.invariants_sql import (
    AGED,
    DECIDED,
    FAILED_IN_WINDOW,
    FAILURE_NOTICE,
    FAILURE_NOTICE_WINDOW_SECONDS,
    IN_WINDOW,
    NOTICE_NEAR_DECISION,
    SENT_COUNTS,
    SENT_SIGNAL,
    TERMINAL,
)

HOURS_RANGE = (1, 720)
LIMIT_RANGE = (1, 5000)
GRACE_RANGE = (0, 3600)
DEFAULT_HOURS = 168
DEFAULT_LIMIT = 500
DEFAULT_GRACE_SECONDS = 60
SIDE = """coalesce(i.side, CASE
    WHEN m.message LIKE '%BUY SIGNAL%' AND m.message NOT LIKE '%SELL SIGNAL%' THEN 'BUY'
    WHEN m.message LIKE '%SELL SIGNAL%' AND m.message NOT LIKE '%BUY SIGNAL%' THEN 'SELL' END)"""
# One pass: the window's sent signals joined to their intents once, then counted and
# listed from that; the violation lists come back as one JSON array.
CHECK_SQL = f"""
WITH sent AS MATERIALIZED (
    SELECT m.id, m.signal_id, coalesce(i.symbol, m.symbol) AS symbol, m.timestamp AS at,
           m.decision_type, m.reason_code, i.status, {AGED} AS aged, {TERMINAL} AS terminal
    FROM telegram_messages m
    LEFT JOIN order_intents i ON i.signal_id = m.signal_id
    WHERE {SENT_SIGNAL} AND {IN_WINDOW}
),
unannounced AS MATERIALIZED (
    SELECT i.signal_id, i.symbol, {DECIDED} AS at, i.status, i.decision_type, i.reason_code,
           (SELECT extract(epoch FROM f.timestamp - {DECIDED})::double precision
            FROM telegram_messages f
            WHERE f.signal_id = i.signal_id AND {FAILURE_NOTICE}
            ORDER BY abs(extract(epoch FROM f.timestamp - {DECIDED})) LIMIT 1) AS nearest_notice_s
    FROM order_intents i
    WHERE {FAILED_IN_WINDOW}
),
listed AS (
    (SELECT 'missing_intent' AS type, signal_id, symbol, at, status AS intent_status,
            decision_type, reason_code, NULL::double precision AS nearest_notice_s, id
     FROM sent WHERE aged AND NOT terminal ORDER BY at DESC, id DESC LIMIT $4)
    UNION ALL
    (SELECT 'null_decisions', signal_id, symbol, at, status, decision_type, reason_code, NULL, id
     FROM sent WHERE aged AND (decision_type IS NULL OR reason_code IS NULL)
     ORDER BY at DESC, id DESC LIMIT $4)
    UNION ALL
    (SELECT 'failed_without_telegram', signal_id, symbol, at, status, decision_type, reason_code,
            nearest_notice_s, NULL
     FROM unannounced ORDER BY at DESC LIMIT $4)
)
SELECT {SENT_COUNTS},
       (SELECT count(*) FROM unannounced) AS failed_without_telegram,
       now() AS generated_at,
       now() - $1::int * interval '1 hour' AS window_start,
       (SELECT coalesce(json_agg(json_build_object(
                   'type', v.type, 'signal_id', v.signal_id, 'symbol', v.symbol, 'at', v.at,
                   'intent_status', v.intent_status, 'decision_type', v.decision_type,
                   'reason_code', v.reason_code, 'nearest_notice_s', v.nearest_notice_s,
                   'age_s', extract(epoch FROM now() - v.at)::double precision)
                 ORDER BY v.at DESC, v.type, v.signal_id), '[]')
        FROM (SELECT * FROM listed ORDER BY at DESC, type, signal_id, id DESC LIMIT $4) v
       )::text AS violations
FROM sent
"""

SIGNALS_SQL = f"""
SELECT m.signal_id::text AS signal_id, coalesce(i.symbol, m.symbol) AS symbol, {SIDE} AS side,
       m.timestamp AS sent_at, i.status AS intent_status, m.decision_type, m.reason_code,
       m.reason_message,
       CASE WHEN i.status = 'ORDER_FAILED' THEN {NOTICE_NEAR_DECISION} END AS failure_notified
FROM telegram_messages m
LEFT JOIN order_intents i ON i.signal_id = m.signal_id
WHERE {SENT_SIGNAL} AND {IN_WINDOW}
ORDER BY m.timestamp DESC, m.id DESC
LIMIT $2
"""

# The list is the newest `limit` rows of an index read backwards, joined row by row: a
# parallel plan (Gather Merge) pays for starting its workers before its first row, and the
# planner chooses one at 12 hours over a month of rows (17 ms there against 7 without; the
# counts, which read every row of the window, keep theirs). For the rest of the transaction.
SERIAL_LISTING_SQL = "SET LOCAL max_parallel_workers_per_gather = 0"


@dataclass(frozen=True)
class Window:
    """The question asked: how far back, how many list items, how long a signal may be in flight."""

    hours: int = DEFAULT_HOURS
    limit: int = DEFAULT_LIMIT
    grace_seconds: int = DEFAULT_GRACE_SECONDS

    def __post_init__(self) -> None:
        for name, value, (low, high) in (
            ("hours", self.hours, HOURS_RANGE),
            ("limit", self.limit, LIMIT_RANGE),
            ("grace_seconds", self.grace_seconds, GRACE_RANGE),
        ):
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def _duration(seconds: float) -> str:
    """Render seconds as 5m01s / 2h03m / 45s."""
    whole = round(abs(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def describe_violation(row: dict[str, Any], grace_seconds: int) -> str:
    """Say in one sentence what is wrong with a violation row and what was expected."""
    kind = row["type"]
    age = _duration(row["age_s"] or 0.0)
    if kind == "missing_intent":
        if row["intent_status"] is None:
            return (
                f"signal message sent {age} ago but no order intent exists for this signal_id "
                f"(grace {grace_seconds}s)"
            )
        return (
            f"order intent still {row['intent_status']} {age} after the signal message "
            f"(grace {grace_seconds}s); expected a terminal status"
        )
    if kind == "null_decisions":
        missing = [col for col in ("decision_type", "reason_code") if row[col] is None]
        return (
            f"signal message row has no decision recorded {age} after it was sent: "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} NULL"
        )
    reason = row["reason_code"] or "no reason code"
    nearest = row["nearest_notice_s"]
    if nearest is None:
        where = "no ORDER FAILED message was sent for this signal_id"
    else:
        direction = "after" if nearest >= 0 else "before"
        where = f"the nearest ORDER FAILED message was {_duration(nearest)} {direction} the decision"
    return (
        f"order failed ({reason}) {age} ago without an ORDER FAILED message within "
        f"±{FAILURE_NOTICE_WINDOW_SECONDS // 60} minutes of the decision: {where}"
    )


def build_report(
    window: Window,
    counts_row: dict[str, Any],
    signal_rows: list[dict[str, Any]],
    violation_rows: list[dict[str, Any]],
) -> RecentSignalsReport:
    """Assemble the §7 answer from the three queries' rows."""
    counts = Counts(**{name: int(counts_row[name]) for name in Counts.model_fields})
    violations_total = counts.missing_intent + counts.null_decisions + counts.failed_without_telegram
    violations = [
        Violation(
            type=row["type"],
            signal_id=row["signal_id"],
            symbol=row["symbol"],
            detail=describe_violation(row, window.grace_seconds),
            at=row["at"],
        )
        for row in violation_rows
    ]
    generated_at: datetime = counts_row["generated_at"]
    return RecentSignalsReport(
        signals=[SignalItem(**row) for row in signal_rows],
        total=counts.total_signals,
        hours=window.hours,
        counts=counts,
        violations=violations,
        passed=violations_total == 0,
        summary=Summary(
            verdict="PASS" if violations_total == 0 else "FAIL",
            violations_total=violations_total,
            generated_at=generated_at,
            window_start=counts_row["window_start"],
            grace_seconds=window.grace_seconds,
            limit=window.limit,
            signals_truncated=counts.total_signals > len(signal_rows),
            violations_truncated=violations_total > len(violations),
        ),
    )


async def recent_signals(pool: asyncpg.Pool, window: Window) -> RecentSignalsReport:
    """Answer the §7 question for one window from one consistent snapshot."""
    args = (window.hours, window.grace_seconds, list(TERMINAL_STATUSES))
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        check = await conn.fetchrow(CHECK_SQL, *args, window.limit)
        await conn.execute(SERIAL_LISTING_SQL)
        signal_rows = await conn.fetch(SIGNALS_SQL, window.hours, window.limit)
    assert check is not None
    counts_row = dict(check)
    violation_rows = json.loads(counts_row.pop("violations"))
    return build_report(window, counts_row, [dict(r) for r in signal_rows], violation_rows)


async def undelivered_messages(pool: asyncpg.Pool) -> int:
    """Count telegram_messages rows that were not delivered (blocked = true)."""
    return int(await pool.fetchval("SELECT count(*) FROM telegram_messages WHERE blocked = true"))
