"""The runtime brake: one control_flags row the orchestrator reads before every order.

Both switches (the CLI and the Telegram commands) go through set_brake, which updates the
flag and appends a brake_events row in one transaction, and announce() the switch as an
OperatorNotice on the `notices` stream, where the notifier picks it up.
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from redis.asyncio import Redis

from shared.consumer import publish
from shared.events import NoticeKind, OperatorNotice, utcnow

BRAKE_FLAG = "brake"
MAX_ACTOR = 128


@dataclass(frozen=True)
class BrakeState:
    """Whether the brake is on, who switched it last, when and why (never switched: off, no one)."""

    enabled: bool
    changed_by: str | None = None
    changed_at: datetime | None = None
    reason: str | None = None

    def describe(self) -> str:
        """Say the state in one line, e.g. `ON since 2026-… by ops@host (reason: maintenance)`."""
        if self.changed_at is None:
            return "OFF (never switched)"
        text = f"{'ON' if self.enabled else 'OFF'} since {self.changed_at.isoformat(timespec='seconds')}"
        text += f" by {self.changed_by}"
        return text + (f" (reason: {self.reason})" if self.reason else "")


@dataclass(frozen=True)
class BrakeChange:
    """The outcome of a switch: the state now, and whether it changed (switching to the same is a no-op)."""

    state: BrakeState
    changed: bool


def default_actor() -> str:
    """Name the person at this terminal: `$USER@hostname`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:MAX_ACTOR]


async def brake_state(conn: asyncpg.Connection | asyncpg.Pool) -> BrakeState:
    """Read the brake's flag."""
    row = await conn.fetchrow(
        "SELECT enabled, changed_by, changed_at, reason FROM control_flags WHERE name = $1", BRAKE_FLAG
    )
    if row is None:
        return BrakeState(enabled=False)
    return BrakeState(row["enabled"], row["changed_by"], row["changed_at"], row["reason"])


async def set_brake(pool: asyncpg.Pool, enabled: bool, *, by: str, reason: str | None = None) -> BrakeChange:
    """Switch the brake on or off, recording who, why and when; a switch to the current state changes nothing."""
    by = by.strip()[:MAX_ACTOR] or default_actor()
    async with pool.acquire() as conn, conn.transaction():
        # One switch at a time: two operators switching at once get one history row each, in order.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 2))", BRAKE_FLAG)
        current = await brake_state(conn)
        if current.changed_at is not None and current.enabled == enabled:
            return BrakeChange(current, changed=False)
        row = await conn.fetchrow(
            "INSERT INTO control_flags (name, enabled, changed_by, reason, changed_at)"
            " VALUES ($1, $2, $3, $4, now())"
            " ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled,"
            "  changed_by = excluded.changed_by, reason = excluded.reason, changed_at = excluded.changed_at"
            " RETURNING enabled, changed_by, changed_at, reason",
            BRAKE_FLAG,
            enabled,
            by,
            reason,
        )
        assert row is not None
        await conn.execute(
            "INSERT INTO brake_events (enabled, changed_by, reason, changed_at) VALUES ($1, $2, $3, $4)",
            enabled,
            by,
            reason,
            row["changed_at"],
        )
    return BrakeChange(BrakeState(row["enabled"], row["changed_by"], row["changed_at"], row["reason"]), True)


async def brake_history(conn: asyncpg.Connection | asyncpg.Pool, limit: int = 10) -> list[BrakeState]:
    """Return the latest switches, newest first."""
    rows = await conn.fetch(
        "SELECT enabled, changed_by, changed_at, reason FROM brake_events ORDER BY id DESC LIMIT $1", limit
    )
    return [BrakeState(r["enabled"], r["changed_by"], r["changed_at"], r["reason"]) for r in rows]


def brake_notice(state: BrakeState) -> OperatorNotice:
    """The notice announcing a switch: BRAKE_ON or BRAKE_OFF, with who, why and when."""
    return OperatorNotice(
        kind=NoticeKind.BRAKE_ON if state.enabled else NoticeKind.BRAKE_OFF,
        actor=state.changed_by,
        reason=state.reason[:500] if state.reason else None,
        at=state.changed_at or utcnow(),
    )


async def announce(redis: Redis, notices_stream: str, state: BrakeState, *, maxlen: int | None = None) -> str:
    """Publish the switch on the `notices` stream; return the entry id."""
    return await publish(redis, notices_stream, brake_notice(state), maxlen=maxlen)
