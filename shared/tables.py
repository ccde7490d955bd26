"""The tables of record (§4), as SQLModel classes; alembic migrations create them."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlmodel import Field, SQLModel

from shared.dedup_key import DEDUP_KEY_HASH

NUMERIC = Numeric(38, 18)


SENT_SIGNAL = "blocked = false AND (message LIKE '%BUY SIGNAL%' OR message LIKE '%SELL SIGNAL%')"


def _ts(nullable: bool = False, default: bool = True) -> Any:
    return Column(
        DateTime(timezone=True),
        nullable=nullable,
        server_default=func.now() if default else None,
    )


class OrderIntent(SQLModel, table=True):
    """One order intent per signal, with its decision."""

    __tablename__ = "order_intents"
    __table_args__ = (
        # The dedup rule's lookups: one 64-bit key instead of three collated texts per comparison.
        Index(
            "ix_order_intents_dedup_key",
            text(DEDUP_KEY_HASH),
            "emitted_at",
            postgresql_where=text("status <> 'DEDUP_SKIPPED'"),
        ),
        Index("ix_order_intents_created_at", "created_at"),
        Index(
            "ix_order_intents_failed_decision",
            text("(COALESCE(decided_at, updated_at))"),
            postgresql_where=text("status = 'ORDER_FAILED'"),
            postgresql_include=["signal_id"],
        ),
        # signal_id's uniqueness, and the diagnostics' index-only status lookups.
        Index(
            "ux_order_intents_signal_id", "signal_id", unique=True, postgresql_include=["status", "symbol"]
        ),
        # Unique because id is (no index of its own): `if-` and the id's hex digits.
        CheckConstraint(
            "idempotency_key = 'if-' || replace(id::text, '-', '')",
            name="ck_order_intents_idempotency_key_of_id",
        ),
    )

    id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    signal_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), nullable=False))
    idempotency_key: str = Field(sa_column=Column(String(64), nullable=False))
    symbol: str = Field(sa_column=Column(String(32), nullable=False))
    side: str = Field(sa_column=Column(String(4), nullable=False))
    strategy: str = Field(sa_column=Column(String(64), nullable=False))
    source: str = Field(sa_column=Column(String(16), nullable=False, server_default="manual"))
    price: Decimal = Field(sa_column=Column(NUMERIC, nullable=False))
    quantity: Decimal | None = Field(default=None, sa_column=Column(NUMERIC, nullable=True))
    status: str = Field(sa_column=Column(String(32), nullable=False))
    decision_type: str | None = Field(default=None, sa_column=Column(String(16)))
    reason_code: str | None = Field(default=None, sa_column=Column(String(64)))
    reason_message: str | None = Field(default=None, sa_column=Column(Text))
    exchange_order_id: str | None = Field(default=None, sa_column=Column(String(128)))
    error_message: str | None = Field(default=None, sa_column=Column(Text))
    emitted_at: datetime = Field(sa_column=_ts(default=False))
    decided_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True, default=False))
    created_at: datetime = Field(sa_column=_ts())
    updated_at: datetime = Field(sa_column=_ts())


class TelegramMessage(SQLModel, table=True):
    """Every Telegram message the system sent or tried to send."""

    __tablename__ = "telegram_messages"
    __table_args__ = (
        Index(
            "ux_telegram_messages_signal_kind",
            "signal_id",
            "kind",
            unique=True,
            postgresql_where=text("kind IN ('SIGNAL', 'ORDER_FAILED')"),
        ),
        Index("ix_telegram_messages_timestamp", "timestamp"),
        Index(
            "ix_telegram_messages_sent_signal_ts",
            "timestamp",
            postgresql_where=text(SENT_SIGNAL),
            postgresql_include=["signal_id", "decision_type", "reason_code"],
        ),
        Index(
            "ix_telegram_messages_failure_notice",
            "signal_id",
            "timestamp",
            postgresql_where=text("blocked = false AND message LIKE '%ORDER FAILED%'"),
        ),
        Index("ix_telegram_messages_blocked", "timestamp", postgresql_where=text("blocked = true")),
        Index(
            "ux_telegram_messages_notice",
            text("(context_json ->> 'notice_id')"),
            unique=True,
            postgresql_where=text("context_json ? 'notice_id'"),
        ),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    signal_id: uuid.UUID | None = Field(default=None, sa_column=Column(UUID(as_uuid=True)))
    kind: str = Field(sa_column=Column(String(32), nullable=False))
    chat_id: str = Field(sa_column=Column(String(64), nullable=False))
    message: str = Field(sa_column=Column(Text, nullable=False))
    symbol: str | None = Field(default=None, sa_column=Column(String(32)))
    blocked: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default="false"))
    telegram_message_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    timestamp: datetime = Field(sa_column=_ts())
    decision_type: str | None = Field(default=None, sa_column=Column(String(16)))
    reason_code: str | None = Field(default=None, sa_column=Column(String(64)))
    reason_message: str | None = Field(default=None, sa_column=Column(Text))
    context_json: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB))


class PaperBalance(SQLModel, table=True):
    """The paper exchange's balance of one asset."""

    __tablename__ = "paper_balances"
    __table_args__ = (CheckConstraint("amount >= 0", name="ck_paper_balances_amount_not_negative"),)

    asset: str = Field(sa_column=Column(String(16), primary_key=True))
    amount: Decimal = Field(sa_column=Column(NUMERIC, nullable=False))
    updated_at: datetime = Field(sa_column=_ts())


class PaperOrder(SQLModel, table=True):
    """An order the paper exchange filled; one per client order id (its key).

    `id` is the order id the exchange answers with ("paper-" and 32 random hex digits):
    unique by construction, and never looked up, so it has no index (migration 0007).
    """

    __tablename__ = "paper_orders"

    client_order_id: str = Field(sa_column=Column(String(64), primary_key=True))
    id: str = Field(sa_column=Column(String(64), nullable=False))
    symbol: str = Field(sa_column=Column(String(32), nullable=False))
    side: str = Field(sa_column=Column(String(4), nullable=False))
    price: Decimal = Field(sa_column=Column(NUMERIC, nullable=False))
    quantity: Decimal = Field(sa_column=Column(NUMERIC, nullable=False))
    quote_amount: Decimal = Field(sa_column=Column(NUMERIC, nullable=False))
    created_at: datetime = Field(sa_column=_ts())


class ControlFlag(SQLModel, table=True):
    """A runtime switch (the brake), with who set it and when."""

    __tablename__ = "control_flags"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    enabled: bool = Field(sa_column=Column(Boolean, nullable=False))
    changed_by: str = Field(sa_column=Column(String(128), nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(Text))
    changed_at: datetime = Field(sa_column=_ts())


class BrakeEvent(SQLModel, table=True):
    """One switch of the brake: on or off, by whom, why, when (the flag keeps only the latest)."""

    __tablename__ = "brake_events"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    enabled: bool = Field(sa_column=Column(Boolean, nullable=False))
    changed_by: str = Field(sa_column=Column(String(128), nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(Text))
    changed_at: datetime = Field(sa_column=_ts())


class WatchdogState(SQLModel, table=True):
    """The watchdog's alert state, shared by every diagnostics replica; its notice is the outbox."""

    __tablename__ = "watchdog_state"

    name: str = Field(sa_column=Column(String(64), primary_key=True))
    violating: bool = Field(sa_column=Column(Boolean, nullable=False))
    seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    announced: Any = Field(default=None, sa_column=Column(JSONB))
    notice: Any = Field(default=None, sa_column=Column(JSONB))
    notice_published: bool = Field(
        default=True, sa_column=Column(Boolean, nullable=False, server_default="true")
    )
    changed_at: datetime = Field(sa_column=_ts())


class WatchdogRepair(SQLModel, table=True):
    """How often the watchdog repaired one signal's violation of one kind (it stops at a limit)."""

    __tablename__ = "watchdog_repairs"

    signal_id: uuid.UUID = Field(sa_column=Column(UUID(as_uuid=True), primary_key=True))
    kind: str = Field(sa_column=Column(String(32), primary_key=True))
    attempts: int = Field(sa_column=Column(Integer, nullable=False))
    first_at: datetime = Field(sa_column=_ts())
    last_at: datetime = Field(sa_column=_ts())


metadata = SQLModel.metadata
