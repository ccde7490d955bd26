"""What `/status` answers: the verdict and counts of the last 12 hours, stream lag, the brake.

The counts come from the diagnostics API when DIAGNOSTICS_URL is set (the one definition
of the invariants), else from the notifier's own query below, built from the same §7
fragments as diagnostics' (shared/invariants_sql.py), without the violation lists.
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
from shared.invariants_sql import AGED, FAILED_IN_WINDOW, IN_WINDOW, SENT_COUNTS, SENT_SIGNAL, TERMINAL
from shared.streams import GROUPS, StreamNames

STATUS_HOURS = 12
STATUS_GRACE_SECONDS = 60
VIOLATIONS = ("missing_intent", "null_decisions", "failed_without_telegram")
OUTCOMES = ("total_signals", "placed", "failed", "dedup", "blocked", "in_flight")
HTTP_TIMEOUT_S = 5.0

COUNTS_SQL = f"""
WITH sent AS (
    SELECT {AGED} AS aged, m.decision_type, m.reason_code, i.status, {TERMINAL} AS terminal
    FROM telegram_messages m
    LEFT JOIN order_intents i ON i.signal_id = m.signal_id
    WHERE {SENT_SIGNAL} AND {IN_WINDOW}
)
SELECT {SENT_COUNTS},
       (SELECT count(*) FROM order_intents i WHERE {FAILED_IN_WINDOW}) AS failed_without_telegram
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
