"""A batch's dedup keys locked, read and written in two round trips, both on its path.

The batch needs, in this order: its dedup keys locked; a read that sees every intent committed
under those locks; its intents inserted and committed; only then the locks let go. In a
transaction block that is four round trips, all on the batch's path (BEGIN with the locks, the
read, the insert, COMMIT). Here:

1. One call of a function that takes a session-level advisory lock per key, in lock-id order
   (no cycles), creates the paper balance rows nobody holds yet, then runs the batch read. It
   is VOLATILE PL/pgSQL: each statement in it takes a fresh snapshot, so the read sees every
   intent committed before the locks were granted. Its read runs on a cached generic plan with
   sequential scans priced out (its SET clauses), as the transaction path does (SET LOCAL).
2. One call of a procedure that runs the insert, COMMITs it, and then lets every key lock of
   the session go (pg_advisory_unlock_all): the locks are released only once the insert is
   durable, and no third round trip is needed (KeyLocks.commit_and_release). A statement that
   returns rows (the live path's insert) runs as itself instead, and the locks are let go by
   one more statement once it has returned, while the consumer publishes the batch's events.

The lock ids are those of intents.locked_transaction (hashtextextended of the key's parts
joined by U+001F, seed 0): session and transaction advisory locks on one id exclude each other,
so this path, the transaction path and orchestrators of earlier releases all exclude one another.

A session lock outlives a failed statement, so on a failure the locks are released before the
error propagates; when the connection cannot be trusted (cancelled mid-statement, broken), it is
closed instead, which releases them as surely.

The function and the procedures live in the connection's pg_temp schema (so each orchestrator
runs its own version of them). KeyLocks defines each on a session before its first call there,
so no call fails for want of it (a failed call would put an ERROR line in PostgreSQL's log); a
call that still finds it missing (a new session that took a closed one's process id, or a
connection used outside KeyLocks) defines it then and calls again. Behind a pooler, this needs
session pooling, as asyncpg's prepared statements already do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from services.orchestrator.exchanges.paper import create_missing_balances_sql
from services.orchestrator.intents import BATCH_STATE_SQL, KEYS_SQL, BatchRead, BatchState, batch_state_of
from shared.dedup_key import dedup_key_hash
from shared.logging import get_logger

log = get_logger("intentflow.orchestrator")

FUNCTION = "pg_temp.intentflow_lock_and_read_batch"

# The batch read's columns (intents.BATCH_STATE_SQL), as the function returns them.
_RESULT = (
    ("kind", "text"),
    ("id", "uuid"),
    ("signal_id", "uuid"),
    ("symbol", "text"),
    ("side", "text"),
    ("price", "numeric"),
    ("status", "text"),
    ("decision_type", "text"),
    ("reason_code", "text"),
    ("reason_message", "text"),
    ("exchange_order_id", "text"),
    ("decided_at", "timestamptz"),
    ("strategy", "text"),
    ("emitted_at", "timestamptz"),
    ("enabled", "boolean"),
    ("changed_by", "text"),
)

# Parameters as BATCH_STATE_SQL numbers them ($1-$6: intents.BatchRead.args).
DEFINE_FUNCTION_SQL = (
    f"CREATE OR REPLACE FUNCTION {FUNCTION}"
    "(text, text, timestamptz, timestamptz, text, text[])"
    f" RETURNS TABLE ({', '.join(f'{name} {kind}' for name, kind in _RESULT)})"
    " LANGUAGE plpgsql VOLATILE"
    " SET plan_cache_mode = force_generic_plan SET enable_seqscan = off"
    " AS $body$\n"
    "#variable_conflict use_column\n"
    "BEGIN\n"
    # The lock id is the key's hash as ix_order_intents_dedup_key indexes it (one expression).
    # One statement rather than a PERFORM per key (0.5 ms instead of 1.5 for 1000 keys): a
    # volatile function in the select list is evaluated after the ORDER BY's sort (PostgreSQL
    # 9.6 and later), so the locks are still taken in lock-id order.
    "  PERFORM pg_advisory_lock(h)\n"
    f"    FROM (SELECT DISTINCT {dedup_key_hash('k.symbol', 'k.side', 'k.strategy')} AS h\n"
    f"          FROM ({KEYS_SQL.format('$2')}) AS k) AS locks\n"
    "    ORDER BY h;\n"
    f"  {create_missing_balances_sql('$6')};\n"
    f"  RETURN QUERY SELECT {', '.join(f'q.{name}::{kind}' for name, kind in _RESULT)}\n"
    f"    FROM ({BATCH_STATE_SQL}) AS q;\n"
    "END\n"
    "$body$"
)

CALL_SQL = f"SELECT * FROM {FUNCTION}($1, $2, $3, $4, $5, $6)"

UNLOCK_SQL = "SELECT pg_advisory_unlock_all()"

# Errors after which the connection is in an unknown state: closed rather than reused.
_UNTRUSTED = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError, TimeoutError)


async def lock_and_read(conn: asyncpg.Connection, read: BatchRead) -> BatchState:
    """Lock read.keys for this session (KeyLocks.connection releases them), then read the batch.

    What intents.read_batch_state_locked reads, in one round trip with the locks; the paper
    balances unlocked, every one of them present (created at 0 if nobody held it).
    """
    args = read.args()
    try:
        rows = await conn.fetch(CALL_SQL, *args)
    except (asyncpg.UndefinedFunctionError, asyncpg.InvalidSchemaNameError):
        # A session KeyLocks has not defined it on: pg_temp (or the function in it) is not
        # there yet. The call failed before it ran, so it took no lock.
        await conn.execute(DEFINE_FUNCTION_SQL)
        rows = await conn.fetch(CALL_SQL, *args)
    return batch_state_of(rows)


def _procedure_name(sql: str) -> str:
    return f"pg_temp.intentflow_commit_{hashlib.sha1(sql.encode(), usedforsecurity=False).hexdigest()[:24]}"


_BODY_TAG = "$intentflow_commit$"


async def _define_procedure(conn: asyncpg.Connection, name: str, sql: str) -> None:
    """Create `name`(the statement's parameter types): the statement, COMMIT, every lock let go."""
    if _BODY_TAG in sql:
        raise ValueError(f"a statement run by commit_and_release cannot hold {_BODY_TAG}")
    oids = [t.oid for t in (await conn.prepare(sql)).get_parameters()]
    types = await conn.fetchval(
        "SELECT string_agg(format_type(t.oid, NULL), ', ' ORDER BY t.n)"
        " FROM unnest($1::oid[]) WITH ORDINALITY AS t(oid, n)",
        oids,
    )
    await conn.execute(
        f"CREATE OR REPLACE PROCEDURE {name}({types or ''}) LANGUAGE plpgsql AS {_BODY_TAG}\n"
        f"BEGIN\n  {sql};\n  COMMIT;\n  PERFORM pg_advisory_unlock_all();\nEND\n{_BODY_TAG}"
    )


class KeyLocks:
    """Pool connections for batches that lock their keys with lock_and_read, released after."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._releasing: set[asyncio.Task[None]] = set()
        # Connections whose locks commit_and_release has let go: back to the pool as they are.
        self._released: set[asyncpg.Connection] = set()
        # (server process id, pg_temp routine): defined on that session by this object.
        self._defined: set[tuple[int, str]] = set()

    async def _define_once(
        self, conn: asyncpg.Connection, name: str, define: Callable[[], Awaitable[object]]
    ) -> None:
        """Run `define` on conn unless this object has already defined `name` on its session."""
        key = (conn.get_server_pid(), name)
        if key not in self._defined:
            await define()
            self._defined.add(key)

    async def commit_and_release(self, conn: asyncpg.Connection, sql: str, *args: Any) -> None:
        """Run `sql` (a statement that returns no rows) on conn, commit it, then let every key
        lock of conn's session go: one round trip, by a procedure wrapping the statement.

        Only on a connection from connection(), outside a transaction block, as the batch's
        last statement. The procedure is defined before the connection's first call for each
        statement text, so `sql` is one of a fixed few (its values come as parameters). Should
        the statement fail, nothing of it is committed and the locks are still held:
        connection() releases them before the error propagates, as for any failure.
        """
        name = _procedure_name(sql)
        call = f"CALL {name}({', '.join(f'${i}' for i in range(1, len(args) + 1))})"
        await self._define_once(conn, name, lambda: _define_procedure(conn, name, sql))
        try:
            await conn.execute(call, *args)
        except (asyncpg.UndefinedFunctionError, asyncpg.InvalidSchemaNameError):
            # A session this object has not defined it on: the CALL failed before it ran.
            await _define_procedure(conn, name, sql)
            await conn.execute(call, *args)
        self._released.add(conn)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection whose session locks are let go when the block ends.

        When the block returns, its statements have committed: unless commit_and_release has
        already let the locks go, they are released in the background and the connection then
        goes back to the pool. When it raises, they are released (or the connection closed)
        before the error propagates, so a retry of the same keys on another connection does not
        wait on them.
        """
        conn = await self.pool.acquire()
        try:
            await self._define_once(conn, FUNCTION, lambda: conn.execute(DEFINE_FUNCTION_SQL))
            yield conn
        except BaseException as exc:
            self._released.discard(conn)
            trusted = isinstance(exc, Exception) and not isinstance(exc, _UNTRUSTED)
            await self._release(conn, trusted=trusted)
            raise
        if conn in self._released:
            self._released.discard(conn)
            await self.pool.release(conn)
            return
        task = asyncio.get_running_loop().create_task(self._release(conn, trusted=True))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def wait_released(self) -> None:
        """Wait until every connection handed out is unlocked and back in the pool."""
        while self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)

    async def _release(self, conn: asyncpg.Connection, *, trusted: bool) -> None:
        try:
            if trusted and not conn.is_closed():
                try:
                    await conn.execute(UNLOCK_SQL)
                    return
                except Exception as exc:
                    log.warning(
                        "could not release a batch's key locks; closing its connection instead",
                        error=repr(exc)[:300],
                    )
            conn.terminate()  # the server ends the session, and its locks with it
        finally:
            await self.pool.release(conn)
