"""The dedup index keyed by one 64-bit hash of (symbol, side, strategy), and only non-skipped rows.

`ix_order_intents_dedup` (symbol, side, strategy, emitted_at) compared three text columns
by collation at every level of every insert: about a quarter of PostgreSQL's CPU per intent.
`ix_order_intents_dedup_key` holds hashtextextended(symbol || U+001F || side || U+001F ||
strategy, 0) and emitted_at, and only the intents the dedup rule looks at (not
DEDUP_SKIPPED). The hash is the key's advisory lock id. A lookup probes the hash and checks
the three columns of what it finds, so a collision costs a recheck, never a wrong match.

Building it reads the whole table once; writes to order_intents wait meanwhile.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

KEY_HASH = "hashtextextended(symbol || E'\\x1f' || side || E'\\x1f' || strategy, 0)"


def upgrade() -> None:
    op.execute(
        f"CREATE INDEX ix_order_intents_dedup_key ON order_intents ({KEY_HASH}, emitted_at)"
        " WHERE status <> 'DEDUP_SKIPPED'"
    )
    op.execute("DROP INDEX ix_order_intents_dedup")


def downgrade() -> None:
    op.execute("CREATE INDEX ix_order_intents_dedup ON order_intents (symbol, side, strategy, emitted_at)")
    op.execute("DROP INDEX ix_order_intents_dedup_key")
