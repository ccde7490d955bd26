"""paper_orders keyed by client_order_id alone: one index per paper order instead of two.

A paper order had two unique indexes: its primary key `id` ("paper-" and 32 random hex
digits, which nothing looks up) and `client_order_id` (one order per intent, the rule the
exchange keeps). Each cost PostgreSQL ~3 µs an order on the insert that records a batch's
intents. `client_order_id` is now the primary key; `id` stays a NOT NULL column, unique by
construction (128 random bits).

Upgrading builds the new key from the table once; writes to paper_orders wait meanwhile.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE paper_orders DROP CONSTRAINT paper_orders_pkey,"
        " DROP CONSTRAINT paper_orders_client_order_id_key,"
        " ADD CONSTRAINT paper_orders_pkey PRIMARY KEY (client_order_id)"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE paper_orders DROP CONSTRAINT paper_orders_pkey,"
        " ADD CONSTRAINT paper_orders_pkey PRIMARY KEY (id),"
        " ADD CONSTRAINT paper_orders_client_order_id_key UNIQUE (client_order_id)"
    )
