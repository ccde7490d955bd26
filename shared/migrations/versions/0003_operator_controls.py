"""Operator controls: the brake's history, the watchdog's alert state and repair counts.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "brake_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("changed_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text),
        _ts("changed_at"),
    )
    op.create_table(
        "watchdog_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("violating", sa.Boolean, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("announced", postgresql.JSONB),
        sa.Column("notice", postgresql.JSONB),
        sa.Column("notice_published", sa.Boolean, nullable=False, server_default="true"),
        _ts("changed_at"),
    )
    op.create_table(
        "watchdog_repairs",
        sa.Column("signal_id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        _ts("first_at"),
        _ts("last_at"),
    )
    # A notice is sent once: two notifiers racing on one redelivered notice cannot both record it.
    op.create_index(
        "ux_telegram_messages_notice",
        "telegram_messages",
        [sa.text("(context_json ->> 'notice_id')")],
        unique=True,
        postgresql_where=sa.text("context_json ? 'notice_id'"),
    )


def downgrade() -> None:
    op.drop_index("ux_telegram_messages_notice", table_name="telegram_messages")
    for table in ("watchdog_repairs", "watchdog_state", "brake_events"):
        op.drop_table(table)
