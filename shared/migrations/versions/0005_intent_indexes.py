"""Two fewer indexes to write per intent, the same guarantees.

- `signal_id`: its unique constraint and `ix_order_intents_signal_status` (signal_id
  INCLUDE status, symbol) become one unique index with those INCLUDE columns.
- `idempotency_key`: its unique index goes; a CHECK ties it to the primary key instead
  (`if-` and the intent id's 32 hex digits, as the orchestrator derives it), so it is
  unique because `id` is. Nothing looks an intent up by it.

Every intent wrote seven indexes, four of them at random places (uuids); PostgreSQL's
CPU per signal grew with the table as those pages fell out of cache.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

KEY_CHECK = "ck_order_intents_idempotency_key_of_id"


def upgrade() -> None:
    op.execute(
        "CREATE UNIQUE INDEX ux_order_intents_signal_id ON order_intents (signal_id) INCLUDE (status, symbol)"
    )
    op.execute("ALTER TABLE order_intents DROP CONSTRAINT order_intents_signal_id_key")
    op.execute("DROP INDEX ix_order_intents_signal_status")
    # NOT VALID: enforced on every new row without checking the old ones, which any key was
    # allowed before (they stay unique: the old unique index held them so until now).
    op.execute(
        f"ALTER TABLE order_intents ADD CONSTRAINT {KEY_CHECK}"
        " CHECK (idempotency_key = 'if-' || replace(id::text, '-', '')) NOT VALID"
    )
    op.execute("ALTER TABLE order_intents DROP CONSTRAINT order_intents_idempotency_key_key")


def downgrade() -> None:
    op.execute(
        "ALTER TABLE order_intents ADD CONSTRAINT order_intents_idempotency_key_key UNIQUE (idempotency_key)"
    )
    op.execute(f"ALTER TABLE order_intents DROP CONSTRAINT {KEY_CHECK}")
    op.execute(
        "CREATE INDEX ix_order_intents_signal_status ON order_intents (signal_id) INCLUDE (status, symbol)"
    )
    op.execute("ALTER TABLE order_intents ADD CONSTRAINT order_intents_signal_id_key UNIQUE (signal_id)")
    op.execute("DROP INDEX ux_order_intents_signal_id")
