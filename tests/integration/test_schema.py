"""The migrations and shared/tables.py describe the same schema; services check it at start."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from shared.db import current_revision, head_revision
from shared.tables import metadata


async def test_the_migrated_database_is_at_head(pool: asyncpg.Pool) -> None:
    assert await current_revision(pool) == head_revision()


# SQLAlchemy 2.1's reflection hands a CHECK constraint's reflected `dialect_options` to
# CheckConstraint(**...) as a keyword of its own (engine/reflection.py,
# _reflect_check_constraints), which warns; alembic does not compare CHECK constraints.
@pytest.mark.filterwarnings(
    "ignore:Can't validate argument 'dialect_options'; can't locate any SQLAlchemy dialect named 'dialect'"
)
async def test_tables_py_matches_the_migrations(database_url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from shared.db import async_sqlalchemy_url

    engine = create_async_engine(async_sqlalchemy_url(database_url))
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
    finally:
        await engine.dispose()
    relevant = [
        d
        for d in diff
        if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")
    ]
    assert relevant == []


async def test_an_intent_key_is_its_id_and_a_signal_has_one_intent(pool: asyncpg.Pool) -> None:
    insert = (
        "INSERT INTO order_intents (id, signal_id, idempotency_key, symbol, side, strategy, price, status,"
        " emitted_at)"
        " VALUES ($1, $2, $3, 'BTC_USDT', 'BUY', 's', 1, 'PENDING', now())"
    )
    first, signal = uuid.uuid4(), uuid.uuid4()
    await pool.execute(insert, first, signal, f"if-{first.hex}")
    other = uuid.uuid4()
    with pytest.raises(asyncpg.CheckViolationError):  # a key not derived from the id
        await pool.execute(insert, other, uuid.uuid4(), f"if-{first.hex}")
    with pytest.raises(asyncpg.UniqueViolationError):  # a second intent for the signal
        await pool.execute(insert, other, signal, f"if-{other.hex}")


PAPER_ORDER = (
    "INSERT INTO paper_orders (id, client_order_id, symbol, side, price, quantity, quote_amount)"
    " VALUES ($1, $2, 'BTC_USDT', 'BUY', 50000, 0.002, 100)"
)


async def _paper_order_indexes(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch(
        "SELECT pg_get_indexdef(indexrelid) AS d FROM pg_index WHERE indrelid = 'paper_orders'::regclass"
    )
    return sorted(r["d"].split(" USING ")[1] for r in rows)


async def test_a_paper_order_is_keyed_by_its_client_order_id_alone(pool: asyncpg.Pool) -> None:
    await pool.execute(PAPER_ORDER, "paper-1", "if-1")
    with pytest.raises(asyncpg.UniqueViolationError):  # one order per client order id
        await pool.execute(PAPER_ORDER, "paper-2", "if-1")
    assert await _paper_order_indexes(pool) == ["btree (client_order_id)"]


async def test_migration_0007_goes_down_and_up_with_paper_orders_in_it(
    database_url: str, pool: asyncpg.Pool
) -> None:
    from shared.db import downgrade, migrate

    await pool.execute(PAPER_ORDER, "paper-1", "if-1")
    await asyncio.to_thread(downgrade, database_url, "0006")
    assert await _paper_order_indexes(pool) == ["btree (client_order_id)", "btree (id)"]
    with pytest.raises(asyncpg.UniqueViolationError):  # the earlier key on id is back
        await pool.execute(PAPER_ORDER, "paper-1", "if-2")
    await asyncio.to_thread(migrate, database_url)
    assert await _paper_order_indexes(pool) == ["btree (client_order_id)"]
    assert await pool.fetchval("SELECT id FROM paper_orders WHERE client_order_id = 'if-1'") == "paper-1"
