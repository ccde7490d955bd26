"""Paper balances never go below zero: fills move them by deltas, checked at write.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CONSTRAINT = "ck_paper_balances_amount_not_negative"


def upgrade() -> None:
    # NOT VALID: enforced on every write from now on without scanning (or refusing) old rows;
    # no fill ever left a balance negative, so there are none to find.
    op.execute(f"ALTER TABLE paper_balances ADD CONSTRAINT {CONSTRAINT} CHECK (amount >= 0) NOT VALID")


def downgrade() -> None:
    op.drop_constraint(CONSTRAINT, "paper_balances", type_="check")
