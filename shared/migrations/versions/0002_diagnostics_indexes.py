"""Indexes the diagnostics invariant queries need on millions of rows.

Each partial index's predicate is spelled exactly as services/diagnostics/invariants.py
spells its WHERE clause, so the planner can prove the query implies it.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SENT_SIGNAL = "blocked = false AND (message LIKE '%BUY SIGNAL%' OR message LIKE '%SELL SIGNAL%')"
FAILURE_NOTICE = "blocked = false AND message LIKE '%ORDER FAILED%'"


def upgrade() -> None:
    # Sent signals in a time window, newest first; INCLUDE lets the counts run index-only.
    op.create_index(
        "ix_telegram_messages_sent_signal_ts",
        "telegram_messages",
        ["timestamp"],
        postgresql_where=sa.text(SENT_SIGNAL),
        postgresql_include=["signal_id", "decision_type", "reason_code"],
    )
    # "Was this failed order announced within ±5 minutes?": one probe per failed intent.
    op.create_index(
        "ix_telegram_messages_failure_notice",
        "telegram_messages",
        ["signal_id", "timestamp"],
        postgresql_where=sa.text(FAILURE_NOTICE),
    )
    # Undelivered messages (blocked = true) are counted on every streams/metrics call.
    op.create_index(
        "ix_telegram_messages_blocked",
        "telegram_messages",
        ["timestamp"],
        postgresql_where=sa.text("blocked = true"),
    )
    # Failed intents by decision time (decided_at, else updated_at), the failure invariant's window.
    op.create_index(
        "ix_order_intents_failed_decision",
        "order_intents",
        [sa.text("(COALESCE(decided_at, updated_at))")],
        postgresql_where=sa.text("status = 'ORDER_FAILED'"),
        postgresql_include=["signal_id"],
    )

    # Each sent signal looks up its intent's status: answered from this index alone
    # (index-only), not from the order_intents heap, once the table is vacuumed.
    op.create_index(
        "ix_order_intents_signal_status",
        "order_intents",
        ["signal_id"],
        postgresql_include=["status", "symbol"],
    )


def downgrade() -> None:
    op.drop_index("ix_order_intents_signal_status", table_name="order_intents")
    op.drop_index("ix_order_intents_failed_decision", table_name="order_intents")
    op.drop_index("ix_telegram_messages_blocked", table_name="telegram_messages")
    op.drop_index("ix_telegram_messages_failure_notice", table_name="telegram_messages")
    op.drop_index("ix_telegram_messages_sent_signal_ts", table_name="telegram_messages")
