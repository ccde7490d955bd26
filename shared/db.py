"""PostgreSQL access: the asyncpg pool, migrations, and the schema check services start with."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

POSTGRES_OUTAGES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.OperatorInterventionError,
    # A connection whose session the server ended while it sat idle in the pool (PostgreSQL
    # stopping, pg_terminate_backend): the FATAL arrives before the socket closes, asyncpg's
    # protocol drops out of step, and the next statement on it raises "cannot switch to state
    # …; another operation is in progress" until the close lands and the pool reconnects.
    asyncpg.InternalClientError,
)
"""PostgreSQL unreachable, starting, stopping or out of connections: what the consumers retry
in place (shared.consumer.TRANSIENT_ERRORS) and diagnostics answer 503 for."""


class SchemaOutOfDate(RuntimeError):
    """The database schema is older than this code; `intentflow migrate` fixes it."""


def async_sqlalchemy_url(url: str) -> str:
    """Turn a postgresql:// URL into SQLAlchemy's asyncpg form."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must start with postgresql://")


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", async_sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """Return the newest migration revision this code ships."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    head = script.get_current_head()
    assert head is not None
    return head


def migrate(url: str) -> str:
    """Bring the schema to the newest revision (blocking); return that revision."""
    from alembic import command

    command.upgrade(_alembic_config(url), "head")
    return head_revision()


def downgrade(url: str, revision: str) -> None:
    """Take the schema down to `revision` (blocking): what a rollback to an older release needs."""
    from alembic import command

    command.downgrade(_alembic_config(url), revision)


async def current_revision(conn: asyncpg.Connection | asyncpg.Pool) -> str | None:
    """Return the database's migration revision, or None before the first migration."""
    exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not exists:
        return None
    value = await conn.fetchval("SELECT version_num FROM alembic_version LIMIT 1")
    return str(value) if value is not None else None


async def require_schema(pool: asyncpg.Pool) -> str:
    """Raise SchemaOutOfDate unless the database is at this code's newest revision."""
    head = head_revision()
    current = await current_revision(pool)
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at {current or 'no revision'}, this code needs {head}: "
            "run `intentflow migrate` first"
        )
    return current


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def json_rows(rows: Iterable[Sequence[Any]]) -> str:
    """Rows as one JSON text for a `jsonb_array_elements($n::text::jsonb)` parameter.

    A batch statement reads row i's column k as `(r->>k)::type`. orjson writes a row of
    uuids, strings, datetimes (ISO 8601) and None in about 1 µs; asyncpg's array encoders,
    one parameter per column, cost ~4.5 µs a row for the intent insert (each element is
    type-checked in Python). Give Decimals as str(d), so they stay exact.
    """
    return orjson.dumps(list(rows), default=json_default).decode()


def json_default(value: Any) -> str:
    """What orjson cannot write itself: uuid.UUID subclasses (asyncpg returns its own) as text."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable here")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool as it is (asyncpg has already ended any transaction).

    No service leaves session state behind (no SET, LISTEN or cursors; the orchestrator's and
    the notifier's session advisory locks are released, or their connection closed, before
    the connection is released: services/orchestrator/key_locks.py,
    services/notifier/notices.py), so asyncpg's default reset, one more
    round trip of `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` per release,
    is skipped.
    """


CUSTOM_PLANS = {"plan_cache_mode": "force_custom_plan"}
"""Every statement planned for its values: asyncpg prepares every statement, and a generic plan
chosen while a table was small (a fresh deploy) stays a sequential scan forever after."""

CACHED_INDEX_PLANS = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}
"""Every statement on its cached generic plan, with sequential scans priced out so that a plan
made while a table was small still probes its indexes once it is large. Only for a pool whose
statements are all written as index probes (the orchestrator's: services/orchestrator/app.py)."""


async def create_pool(
    url: str, *, min_size: int = 1, max_size: int = 5, plans: dict[str, str] | None = None
) -> asyncpg.Pool:
    """Open an asyncpg pool; JSONB columns map to Python objects; plans: CUSTOM_PLANS unless given."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=30,
        server_settings=dict(plans or CUSTOM_PLANS),
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def wait_for_pool(
    url: str,
    *,
    stop: asyncio.Event | None = None,
    log: Any = None,
    min_size: int = 1,
    max_size: int = 5,
    plans: dict[str, str] | None = None,
) -> asyncpg.Pool:
    """Open a pool, retrying with backoff while PostgreSQL is unreachable."""
    delay = 0.2
    while True:
        try:
            return await create_pool(url, min_size=min_size, max_size=max_size, plans=plans)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if stop is not None and stop.is_set():
                raise
            if log is not None:
                log.warning("postgres unreachable, retrying", error=type(exc).__name__, delay_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
