"""An intent's dedup key in SQL: (symbol, side, strategy) as one bigint, as it is indexed and locked.

Its own module, free of SQLAlchemy: the orchestrator's statements use it, and importing
shared.tables (sqlmodel) only for it cost the orchestrator ~10 MB of memory.
"""

from __future__ import annotations


def dedup_key_hash(symbol: str = "symbol", side: str = "side", strategy: str = "strategy") -> str:
    """SQL for a dedup key (symbol, side, strategy) as one bigint: its parts joined by U+001F and
    hashed as its advisory lock id is (services/orchestrator/intents.py). Indexed, with emitted_at,
    over order_intents' own columns (DEDUP_KEY_HASH); a lookup gives its key's expressions."""
    # Written as PostgreSQL prints the index expression back, so that alembic sees it unchanged.
    sep = f"'{chr(31)}'::text"
    return f"hashtextextended(((({symbol}::text || {sep}) || {side}::text) || {sep}) || {strategy}::text, 0::bigint)"


DEDUP_KEY_HASH = dedup_key_hash()
