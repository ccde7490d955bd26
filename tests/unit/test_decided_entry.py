"""The OrderDecided entry written straight from an intent row equals the model's own JSON."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from services.orchestrator.intents import IntentRow
from shared.events import OrderDecided
from shared.streams import EVENT_FIELD, TYPE_FIELD, encode_entry

MESSAGES = ["", "paper BUY 0.002 BTC at 50000", 'é "quoted" \\ back\nslash\t\u2028 🚀 \x00 \x1f', "x" * 5000]
TIMES = [
    datetime(2026, 11, 26, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 26, 0, 0, 0, 120000, tzinfo=UTC),
    datetime(2026, 11, 26, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 11, 26, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
]
DECISIONS = [
    ("ORDER_PLACED", "EXECUTED", "ORDER_PLACED", "paper-0123abcd"),
    ("ORDER_FAILED", "FAILED", "INSUFFICIENT_FUNDS", None),
    ("DEDUP_SKIPPED", "SKIPPED", "DUPLICATE_SIGNAL", None),
    ("BLOCKED_LIVE_TRADING", "SKIPPED", "ORDER_BLOCKED_LIVE_TRADING", None),
]


def _row(message: str | None, at: datetime, decision: tuple[str, str, str, str | None]) -> IntentRow:
    status, decision_type, reason_code, order_id = decision
    return IntentRow(
        uuid.uuid4(), uuid.uuid4(), "ETH/USDT", "SELL", Decimal("3000.5"), status, decision_type, reason_code, message,
        order_id, at,
    )  # fmt: skip


@pytest.mark.parametrize("message", [*MESSAGES, None])
@pytest.mark.parametrize("at", TIMES)
@pytest.mark.parametrize("decision", DECISIONS)
def test_entry_is_the_models_json(
    message: str | None, at: datetime, decision: tuple[str, str, str, str | None]
) -> None:
    row = _row(message, at, decision)
    model = OrderDecided(
        signal_id=row.signal_id,
        intent_id=row.id,
        symbol=row.symbol,
        side=row.side,
        status=row.status,
        decision_type=row.decision_type,
        reason_code=row.reason_code,
        reason_message=row.reason_message or "",
        exchange_order_id=row.exchange_order_id,
        decided_at=at,
    )
    entry = row.decided_entry()
    assert entry == encode_entry(model)
    assert list(entry) == [TYPE_FIELD, EVENT_FIELD]
    assert OrderDecided.model_validate_json(entry[EVENT_FIELD]) == model


def test_an_undecided_row_has_no_entry() -> None:
    row = _row(None, TIMES[0], DECISIONS[0])
    pending = IntentRow(
        *(row.id, row.signal_id, row.symbol, row.side, row.price), "PENDING", None, None, None, None, None
    )
    with pytest.raises(ValueError, match="not decided"):
        pending.decided_entry()


def test_ids_read_back_by_asyncpg_are_written_too() -> None:
    # Rows recorded earlier come back from PostgreSQL with asyncpg's own UUID subclass.
    from asyncpg.pgproto.pgproto import UUID as PgUUID

    row = _row("resumed", TIMES[1], DECISIONS[0])
    from_db = row._replace(id=PgUUID(str(row.id)), signal_id=PgUUID(str(row.signal_id)))
    assert type(from_db.id) is not uuid.UUID
    assert from_db.decided_entry() == row.decided_entry()


def test_anything_else_orjson_cannot_write_is_refused() -> None:
    from shared.db import json_rows

    with pytest.raises(TypeError, match="Decimal"):
        json_rows([(Decimal("1.5"),)])
