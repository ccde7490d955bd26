"""SQL for telegram_messages: what was sent, and each signal's decision trace on its row."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.events import TERMINAL_STATUSES, OrderDecided

SIGNAL = "SIGNAL"
ORDER_FAILED = "ORDER_FAILED"


@dataclass(frozen=True)
class MessageRow:
    """One row to record: a signal's part of a Telegram message."""

    signal_id: uuid.UUID | None
    kind: str
    chat_id: str
    message: str
    symbol: str | None
    blocked: bool
    telegram_message_id: int | None
    context: dict[str, Any]


async def lock_signals(conn: asyncpg.Connection, signal_ids: Sequence[uuid.UUID]) -> None:
    """Serialise writers of one signal's rows (its message and its decision) for this transaction."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(h) FROM ("
        " SELECT DISTINCT hashtextextended(s::text, 1) AS h FROM unnest($1::uuid[]) AS s ORDER BY h"
        ") AS locks",
        list(signal_ids),
    )


async def already_recorded(
    conn: asyncpg.Connection | asyncpg.Pool, kind: str, signal_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Return the signals that already have a row of this kind (their message went out before)."""
    rows = await conn.fetch(
        "SELECT signal_id FROM telegram_messages WHERE kind = $1 AND signal_id = ANY($2::uuid[])",
        kind,
        list(signal_ids),
    )
    return {r["signal_id"] for r in rows}


async def record(conn: asyncpg.Connection, rows: Sequence[MessageRow]) -> int:
    """Insert message rows, filling each one's decision from its terminal intent; skip ones recorded."""
    if not rows:
        return 0
    signal_ids = [r.signal_id for r in rows if r.signal_id is not None]
    await lock_signals(conn, signal_ids)
    result = await conn.execute(
        "INSERT INTO telegram_messages (signal_id, kind, chat_id, message, symbol, blocked,"
        " telegram_message_id, context_json, decision_type, reason_code, reason_message)"
        " SELECT u.signal_id, u.kind, u.chat_id, u.message, u.symbol, u.blocked, u.tg_id, u.ctx::jsonb,"
        "  i.decision_type, i.reason_code, i.reason_message"
        " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::bigint[],"
        "  $8::text[]) AS u(signal_id, kind, chat_id, message, symbol, blocked, tg_id, ctx)"
        " LEFT JOIN order_intents i ON i.signal_id = u.signal_id AND i.status = ANY($9::text[])"
        " ON CONFLICT (signal_id, kind) WHERE kind IN ('SIGNAL', 'ORDER_FAILED') DO NOTHING",
        [r.signal_id for r in rows],
        [r.kind for r in rows],
        [r.chat_id for r in rows],
        [r.message for r in rows],
        [r.symbol for r in rows],
        [r.blocked for r in rows],
        [r.telegram_message_id for r in rows],
        [_json(r.context) for r in rows],
        list(TERMINAL_STATUSES),
    )
    return int(result.split()[-1])


async def write_decisions(conn: asyncpg.Connection, decisions: Sequence[OrderDecided]) -> int:
    """Write each decision onto its signal's message rows (whichever event came first)."""
    if not decisions:
        return 0
    await lock_signals(conn, [d.signal_id for d in decisions])
    result = await conn.execute(
        "UPDATE telegram_messages m SET decision_type = u.decision_type, reason_code = u.reason_code,"
        " reason_message = u.reason_message"
        " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])"
        "  AS u(signal_id, decision_type, reason_code, reason_message)"
        " WHERE m.signal_id = u.signal_id AND m.kind IN ('SIGNAL', 'ORDER_FAILED')"
        "  AND (m.decision_type IS DISTINCT FROM u.decision_type OR m.reason_code IS DISTINCT FROM u.reason_code)",
        [d.signal_id for d in decisions],
        [d.decision_type.value for d in decisions],
        [d.reason_code.value for d in decisions],
        [d.reason_message for d in decisions],
    )
    return int(result.split()[-1])


def _json(value: dict[str, Any]) -> str:
    import json

    return json.dumps(value, default=str)
