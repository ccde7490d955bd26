"""The tables of record: order_intents, telegram_messages, the paper exchange, control flags.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NUM = sa.Numeric(38, 18)


def _ts(name: str, nullable: bool = False, default: bool = True) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=sa.func.now() if default else None,
    )


def upgrade() -> None:
    op.create_table(
        "order_intents",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("signal_id", postgresql.UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("idempotency_key", sa.String(64), nullable=False, unique=True),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("strategy", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False, server_default="manual"),
        sa.Column("price", NUM, nullable=False),
        sa.Column("quantity", NUM, nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("decision_type", sa.String(16)),
        sa.Column("reason_code", sa.String(64)),
        sa.Column("reason_message", sa.Text),
        sa.Column("exchange_order_id", sa.String(128)),
        sa.Column("error_message", sa.Text),
        _ts("emitted_at", default=False),
        _ts("decided_at", nullable=True, default=False),
        _ts("created_at"),
        _ts("updated_at"),
    )
    op.create_index("ix_order_intents_dedup", "order_intents", ["symbol", "side", "strategy", "emitted_at"])
    op.create_index("ix_order_intents_created_at", "order_intents", ["created_at"])

    op.create_table(
        "telegram_messages",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("signal_id", postgresql.UUID(as_uuid=True)),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(64), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("symbol", sa.String(32)),
        sa.Column("blocked", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("telegram_message_id", sa.BigInteger),
        _ts("timestamp"),
        sa.Column("decision_type", sa.String(16)),
        sa.Column("reason_code", sa.String(64)),
        sa.Column("reason_message", sa.Text),
        sa.Column("context_json", postgresql.JSONB),
    )
    op.create_index(
        "ux_telegram_messages_signal_kind",
        "telegram_messages",
        ["signal_id", "kind"],
        unique=True,
        postgresql_where=sa.text("kind IN ('SIGNAL', 'ORDER_FAILED')"),
    )
    op.create_index("ix_telegram_messages_timestamp", "telegram_messages", ["timestamp"])

    op.create_table(
        "paper_balances",
        sa.Column("asset", sa.String(16), primary_key=True),
        sa.Column("amount", NUM, nullable=False),
        _ts("updated_at"),
    )
    op.create_table(
        "paper_orders",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("client_order_id", sa.String(64), nullable=False, unique=True),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("price", NUM, nullable=False),
        sa.Column("quantity", NUM, nullable=False),
        sa.Column("quote_amount", NUM, nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "control_flags",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("changed_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text),
        _ts("changed_at"),
    )


def downgrade() -> None:
    for table in (
        "control_flags",
        "paper_orders",
        "paper_balances",
        "telegram_messages",
        "order_intents",
    ):
        op.drop_table(table)
