"""SQL for order intents: batch reads, the dedup lock, batch inserts and decisions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg

from services.orchestrator.decide import Decision, DedupKey, Plan
from services.orchestrator.exchanges.base import client_order_id
from shared.events import IntentStatus, OrderDecided, Side

BRAKE_FLAG = "brake"


@dataclass(frozen=True)
class IntentRow:
    """The fields of an order intent the pipeline needs after it was written."""

    id: uuid.UUID
    signal_id: uuid.UUID
    symbol: str
    side: str
    price: Decimal
    status: str
    decision_type: str | None
    reason_code: str | None
    reason_message: str | None
    exchange_order_id: str | None
    decided_at: datetime | None

    def decided_event(self) -> OrderDecided:
        """The OrderDecided event for a terminal intent."""
        return OrderDecided.model_validate(
            {
                "signal_id": self.signal_id,
                "intent_id": self.id,
                "symbol": self.symbol,
                "side": Side(self.side),
                "status": self.status,
                "decision_type": self.decision_type,
                "reason_code": self.reason_code,
                "reason_message": self.reason_message or "",
                "exchange_order_id": self.exchange_order_id,
                "decided_at": self.decided_at,
            }
        )


_COLUMNS = (
    "id, signal_id, symbol, side, price, status, decision_type, reason_code, "
    "reason_message, exchange_order_id, decided_at"
)


def _row(record: asyncpg.Record) -> IntentRow:
    return IntentRow(**dict(record))


async def fetch_by_signal(
    conn: asyncpg.Connection, signal_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, IntentRow]:
    """Return the intents already recorded for these signals."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM order_intents WHERE signal_id = ANY($1::uuid[])", list(signal_ids)
    )
    return {r["signal_id"]: _row(r) for r in rows}


async def lock_keys(conn: asyncpg.Connection, keys: Sequence[DedupKey]) -> None:
    """Take a transaction-scoped advisory lock per dedup key, in a fixed order (no deadlocks)."""
    names = sorted({"\x1f".join(k) for k in keys})
    await conn.execute(
        "SELECT pg_advisory_xact_lock(h) FROM ("
        " SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest($1::text[]) AS k ORDER BY h"
        ") AS locks",
        names,
    )


async def active_intents(
    conn: asyncpg.Connection,
    keys: Sequence[DedupKey],
    earliest: datetime,
    latest: datetime,
    window_s: float,
) -> list[tuple[DedupKey, datetime]]:
    """Return (key, emitted_at) of non-skipped intents of these keys near the given times."""
    if not keys:
        return []
    pad = timedelta(seconds=window_s)
    # LATERAL: one index range scan of ix_order_intents_dedup per key, whatever the statistics say.
    rows = await conn.fetch(
        "SELECT k.symbol, k.side, k.strategy, i.emitted_at"
        " FROM unnest($1::text[], $2::text[], $3::text[]) AS k(symbol, side, strategy)"
        " CROSS JOIN LATERAL (SELECT emitted_at FROM order_intents"
        "   WHERE symbol = k.symbol AND side = k.side AND strategy = k.strategy"
        "     AND emitted_at > $4 AND emitted_at < $5 AND status <> 'DEDUP_SKIPPED') AS i",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        earliest - pad,
        latest + pad,
    )
    return [((r["symbol"], r["side"], r["strategy"]), r["emitted_at"]) for r in rows]


async def brake_reason(conn: asyncpg.Connection) -> str | None:
    """Return why the runtime brake holds orders back, or None when it is off."""
    row = await conn.fetchrow(
        "SELECT enabled, changed_by, changed_at FROM control_flags WHERE name = $1", BRAKE_FLAG
    )
    if row is None or not row["enabled"]:
        return None
    return f"the brake is on (set by {row['changed_by']} at {row['changed_at'].isoformat()})"


async def insert_plans(conn: asyncpg.Connection, plans: Sequence[Plan]) -> list[IntentRow]:
    """Insert one intent per plan (terminal or PENDING); a signal already recorded is left alone."""
    if not plans:
        return []
    d = [p.decision for p in plans]
    rows = await conn.fetch(
        "INSERT INTO order_intents (id, signal_id, idempotency_key, symbol, side, strategy, source,"
        " price, status, decision_type, reason_code, reason_message, emitted_at, decided_at)"
        " SELECT u.id, u.signal_id, u.key, u.symbol, u.side, u.strategy, u.source, u.price, u.status,"
        "  u.decision_type, u.reason_code, u.reason_message, u.emitted_at,"
        "  CASE WHEN u.status <> 'PENDING' THEN now() END"
        " FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],"
        "  $7::text[], $8::numeric[], $9::text[], $10::text[], $11::text[], $12::text[],"
        "  $13::timestamptz[])"
        " AS u(id, signal_id, key, symbol, side, strategy, source, price, status, decision_type,"
        "  reason_code, reason_message, emitted_at)"
        f" ON CONFLICT (signal_id) DO NOTHING RETURNING {_COLUMNS}",
        [p.intent_id for p in plans],
        [p.signal.signal_id for p in plans],
        [client_order_id(p.intent_id) for p in plans],
        [p.signal.symbol for p in plans],
        [p.signal.side.value for p in plans],
        [p.signal.strategy for p in plans],
        [p.signal.source.value for p in plans],
        [p.signal.price for p in plans],
        [x.status.value if x else IntentStatus.PENDING.value for x in d],
        [x.decision_type.value if x else None for x in d],
        [x.reason_code.value if x else None for x in d],
        [x.reason_message if x else None for x in d],
        [p.signal.emitted_at for p in plans],
    )
    return [_row(r) for r in rows]


@dataclass(frozen=True)
class Outcome:
    """The decision for one PENDING intent after its order was tried."""

    intent_id: uuid.UUID
    decision: Decision
    quantity: Decimal | None
    exchange_order_id: str | None
    error_message: str | None


async def record_outcomes(conn: asyncpg.Connection, outcomes: Sequence[Outcome]) -> list[IntentRow]:
    """Write decisions onto PENDING intents (a racing writer that came first wins)."""
    if not outcomes:
        return []
    rows = await conn.fetch(
        "UPDATE order_intents i SET status = u.status, decision_type = u.decision_type,"
        " reason_code = u.reason_code, reason_message = u.reason_message, quantity = u.quantity,"
        " exchange_order_id = u.order_id, error_message = u.error, decided_at = now(), updated_at = now()"
        " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[],"
        "  $7::text[], $8::text[]) AS u(id, status, decision_type, reason_code, reason_message,"
        "  quantity, order_id, error)"
        " WHERE i.id = u.id AND i.status = 'PENDING' RETURNING "
        + ", ".join(f"i.{c.strip()}" for c in _COLUMNS.split(",")),
        [o.intent_id for o in outcomes],
        [o.decision.status.value for o in outcomes],
        [o.decision.decision_type.value for o in outcomes],
        [o.decision.reason_code.value for o in outcomes],
        [o.decision.reason_message for o in outcomes],
        [o.quantity for o in outcomes],
        [o.exchange_order_id for o in outcomes],
        [o.error_message for o in outcomes],
    )
    return [_row(r) for r in rows]


async def fetch_by_id(conn: asyncpg.Connection, intent_ids: Sequence[uuid.UUID]) -> list[IntentRow]:
    """Return intents by id."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM order_intents WHERE id = ANY($1::uuid[])", list(intent_ids)
    )
    return [_row(r) for r in rows]
