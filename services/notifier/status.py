"""What `/status` answers: the verdict and counts of the last 12 hours, stream lag, the brake.

The counts come from the diagnostics API when DIAGNOSTICS_URL is set (the one definition
of the invariants), else from the notifier's own query below, which counts the same three
violations by the same §7 definitions (services never import each other, so it is spelled
again here, compactly, without the violation lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from services.notifier.messages import esc
from shared.brake import BrakeState
from shared.events import TERMINAL_STATUSES
from shared.streams import GROUPS, StreamNames

STATUS_HOURS = 12
STATUS_GRACE_SECONDS = 60
VIOLATIONS = ("missing_intent", "null_decisions", "failed_without_telegram")
OUTCOMES = ("total_signals", "placed", "failed", "dedup", "blocked", "in_flight")
HTTP_TIMEOUT_S = 5.0

COUNTS_SQL = """
WITH sent AS (
    SELECT m.timestamp < now() - $2::int * interval '1 second' AS aged, m.decision_type,
           m.reason_code, i.status, coalesce(i.status = ANY($3::text[]), false) AS terminal
    FROM telegram_messages m
    LEFT JOIN order_intents i ON i.signal_id = m.signal_id
    WHERE m.blocked = false AND (m.message LIKE '%BUY SIGNAL%' OR m.message LIKE '%SELL SIGNAL%')
      AND m.timestamp >= now() - $1::int * interval '1 hour'
)
SELECT count(*) AS total_signals,
       count(*) FILTER (WHERE status = 'ORDER_PLACED') AS placed,
       count(*) FILTER (WHERE status = 'ORDER_FAILED') AS failed,
       count(*) FILTER (WHERE status = 'DEDUP_SKIPPED') AS dedup,
       count(*) FILTER (WHERE status = 'BLOCKED_LIVE_TRADING') AS blocked,
       count(*) FILTER (WHERE NOT terminal AND NOT aged) AS in_flight,
       count(*) FILTER (WHERE NOT terminal AND aged) AS missing_intent,
       count(*) FILTER (WHERE aged AND (decision_type IS NULL OR reason_code IS NULL)) AS null_decisions,
       (SELECT count(*) FROM order_intents i
        WHERE i.status = 'ORDER_FAILED'
          AND coalesce(i.decided_at, i.updated_at) >= now() - $1::int * interval '1 hour'
          AND coalesce(i.decided_at, i.updated_at) < now() - $2::int * interval '1 second'
          AND NOT EXISTS (
              SELECT 1 FROM telegram_messages f
              WHERE f.signal_id = i.signal_id AND f.blocked = false AND f.message LIKE '%ORDER FAILED%'
                AND f.timestamp BETWEEN coalesce(i.decided_at, i.updated_at) - interval '300 seconds'
                                    AND coalesce(i.decided_at, i.updated_at) + interval '300 seconds')
       ) AS failed_without_telegram
FROM sent
"""


@dataclass(frozen=True)
class Status:
    """The figures `/status` shows."""

    counts: dict[str, int]
    lag: dict[str, int | None] = field(default_factory=dict)
    brake: BrakeState | None = None
    source: str = "database"

    @property
    def violations_total(self) -> int:
        return sum(self.counts.get(k, 0) for k in VIOLATIONS)


def status_text(status: Status, hours: int = STATUS_HOURS) -> str:
    """Render the /status reply (HTML)."""
    verdict = "PASS" if status.violations_total == 0 else "FAIL"
    icon = "✅" if verdict == "PASS" else "🚨"
    counts = status.counts
    lines = [
        f"{icon} <b>STATUS {verdict}</b> (last {hours} h)",
        "signals: " + " · ".join(f"{k.replace('_', ' ')} {counts.get(k, 0)}" for k in OUTCOMES),
        "violations: " + " · ".join(f"{k} {counts.get(k, 0)}" for k in VIOLATIONS),
    ]
    if status.lag:
        lines.append(
            "stream lag: "
            + " · ".join(f"{esc(name)} {'?' if n is None else n}" for name, n in status.lag.items())
        )
    if status.brake is not None:
        lines.append(f"brake: {esc(status.brake.describe())}")
    lines.append(f"source: {esc(status.source)}")
    return "\n".join(lines)


async def counts_from_database(pool: asyncpg.Pool, hours: int = STATUS_HOURS) -> dict[str, int]:
    """Count the window's outcomes and the three violations with the notifier's own query."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(COUNTS_SQL, hours, STATUS_GRACE_SECONDS, list(TERMINAL_STATUSES))
    assert row is not None
    return {k: int(v) for k, v in dict(row).items()}


async def counts_from_diagnostics(url: str, token: str | None, hours: int = STATUS_HOURS) -> dict[str, int]:
    """Ask the diagnostics API for the window's counts; raise httpx.HTTPError or ValueError when it cannot."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
        response = await http.get(
            url.rstrip("/") + "/api/diagnostics/recent-signals",
            params={"hours": hours, "limit": 1, "grace_seconds": STATUS_GRACE_SECONDS},
            headers=headers,
        )
        response.raise_for_status()
        body: Any = response.json()
    counts = body["counts"] if isinstance(body, dict) else None
    if not isinstance(counts, dict):
        raise ValueError("the diagnostics answer has no counts")
    return {k: int(v) for k, v in counts.items()}


async def stream_lag(redis: Redis, names: StreamNames) -> dict[str, int | None]:
    """Return each group's lag as `stream/group` -> entries not yet delivered (None: Redis cannot tell)."""
    out: dict[str, int | None] = {}
    for stream, groups in GROUPS.items():
        if not groups or not await redis.exists(names.key(stream)):
            continue
        for info in await redis.xinfo_groups(names.key(stream)):
            if info["name"] in groups:
                lag = info.get("lag")
                out[f"{stream}/{info['name']}"] = None if lag is None else int(lag)
    return out
