"""SQL for order intents: batch reads, the dedup lock, batch inserts and decisions."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import asyncpg
import orjson

from services.orchestrator.decide import Decision, DedupKey, Plan
from services.orchestrator.exchanges.paper import lock_balances_sql, read_balances_sql
from shared.db import json_default, json_rows
from shared.dedup_key import DEDUP_KEY_HASH, dedup_key_hash
from shared.events import IntentStatus, OrderDecided
from shared.streams import EVENT_FIELD, TYPE_FIELD

BRAKE_FLAG = "brake"


class IntentRow(NamedTuple):
    """The fields of an order intent the pipeline needs after it was written."""

    id: uuid.UUID
    signal_id: uuid.UUID
    symbol: str
    side: str
    price: Decimal
    status: str
    decision_type: str | None
    reason_code: str | None
    reason_message: str | None
    exchange_order_id: str | None
    decided_at: datetime | None

    def decided_entry(self) -> dict[str, str]:
        """The stream entry of this terminal intent's OrderDecided event, as encode_entry makes it.

        Written with orjson from the row (which the pipeline itself wrote): the same bytes as
        OrderDecided(...).model_dump_json(), without building and re-validating a model per
        signal (tests/unit/test_decided_entry.py holds the two side by side).
        """
        if self.decided_at is None or self.decision_type is None or self.reason_code is None:
            raise ValueError(f"intent {self.id} is not decided (status {self.status})")
        event = {
            "signal_id": self.signal_id,
            "intent_id": self.id,
            "symbol": self.symbol,
            "side": self.side,
            "status": self.status,
            "decision_type": self.decision_type,
            "reason_code": self.reason_code,
            "reason_message": self.reason_message or "",
            "exchange_order_id": self.exchange_order_id,
            "decided_at": self.decided_at,
            "schema_version": 1,
        }
        return {
            TYPE_FIELD: DECIDED_TYPE,
            EVENT_FIELD: orjson.dumps(event, default=json_default, option=orjson.OPT_UTC_Z).decode(),
        }


DECIDED_TYPE = OrderDecided.__name__

_COLUMNS = (
    "id, signal_id, symbol, side, price, status, decision_type, reason_code, "
    "reason_message, exchange_order_id, decided_at"
)


def _row(record: asyncpg.Record) -> IntentRow:
    return IntentRow(*record)


@contextlib.asynccontextmanager
async def locked_transaction(conn: asyncpg.Connection, keys: Sequence[DedupKey]) -> AsyncIterator[None]:
    """A transaction holding an advisory lock per dedup key, taken in a fixed order (no
    deadlocks), with the batch's statements on cached plans; committed when the block ends,
    rolled back when it raises.

    BEGIN and the locks go in one round trip (a simple query; the keys as a literal, so no
    parameters): on this hot path a round trip costs more than the statement. The lock ids
    are hashtextextended(key, 0), as before, so orchestrators of either release exclude
    each other.

    The pool plans every statement afresh (force_custom_plan): right for queries whose best
    plan depends on their values and on a table's size. The batch read and the insert are
    built so that they have one right plan whatever the sizes (index probes, fenced); planning
    them anew cost ~0.5 ms a batch, a fifth of PostgreSQL's time at 1,000 signals/s. So, for
    this transaction only: the cached generic plan, with sequential scans priced out so that a
    plan cached while a table was small still probes its indexes once it is large.
    """
    if conn.is_in_transaction():  # its BEGIN would not nest, and its COMMIT would end the outer one
        raise RuntimeError("locked_transaction needs a connection outside any transaction")
    names = sorted({"\x1f".join(k) for k in keys})
    try:
        await conn.execute(
            "BEGIN; SELECT set_config('plan_cache_mode', 'force_generic_plan', true),"
            " set_config('enable_seqscan', 'off', true),"
            " (SELECT count(pg_advisory_xact_lock(h)) FROM ("
            "  SELECT DISTINCT hashtextextended(k, 0) AS h"
            f"  FROM unnest({text_array_literal(names)}::text[]) AS k ORDER BY h"
            " ) AS locks)"
        )
        yield
    except BaseException:
        if not conn.is_closed() and conn.is_in_transaction():
            # Should this fail too (the connection broke, or is being cancelled), the pool
            # rolls back when the connection comes back; the first error is the one to see.
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


def text_array_literal(values: Sequence[str]) -> str:
    """A PostgreSQL text[] constant holding values, safe to put in a statement: E'{"…",…}'.

    Each element is double-quoted with its backslashes and double quotes escaped (array
    syntax), then the whole is an escape string constant (E'…', whatever
    standard_conforming_strings says) with its backslashes and single quotes escaped.
    """
    if any("\x00" in v for v in values):
        raise ValueError("a text value cannot hold a NUL character")
    elements = ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "E'{" + elements.replace("\\", "\\\\").replace("'", "''") + "}'"


# Each part is a LATERAL subquery fenced with OFFSET 0, so the planner cannot flatten it
# into a join: one index probe per signal (the unique signal_id) and one index range scan
# of ix_order_intents_dedup_key per key (its hash; the key's columns checked on what it
# finds), whatever the statistics say. Flattened, a table the planner still thinks small (a
# fresh deploy, before autovacuum's first ANALYZE) was read whole twice per batch: ~70 µs of
# PostgreSQL CPU per signal at 20k rows, growing with it.
# The signal ids and the keys come as JSON texts (BatchRead.args): asyncpg's array encoders
# cost ~0.9 µs a signal in the orchestrator for the four arrays, orjson ~0.05.
def _batch_state_sql(held: str) -> str:
    return (
        f"WITH {held}"
        " SELECT 'r' AS kind, r.*, NULL::text AS strategy, NULL::timestamptz AS emitted_at,"
        "  NULL::bool AS enabled, NULL::text AS changed_by"
        " FROM jsonb_array_elements_text($1::text::jsonb) AS s(id)"
        f" CROSS JOIN LATERAL (SELECT {_COLUMNS} FROM order_intents WHERE signal_id = s.id::uuid OFFSET 0) AS r"
        " UNION ALL"
        " SELECT 'a', NULL, NULL, k.symbol, k.side, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
        "  k.strategy, i.emitted_at, NULL, NULL"
        f" FROM ({KEYS_SQL.format('$2')}) AS k"
        " CROSS JOIN LATERAL (SELECT emitted_at FROM order_intents"
        f"   WHERE {DEDUP_KEY_HASH} = {dedup_key_hash('k.symbol', 'k.side', 'k.strategy')}"
        "     AND symbol = k.symbol AND side = k.side AND strategy = k.strategy"
        "     AND emitted_at > $3 AND emitted_at < $4 AND status <> 'DEDUP_SKIPPED' OFFSET 0) AS i"
        " UNION ALL"
        " SELECT 'b', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, changed_at,"
        "  NULL, NULL, enabled, changed_by"
        " FROM control_flags WHERE name = $5"
        " UNION ALL"
        " SELECT 'h', NULL, NULL, asset, NULL, amount, NULL, NULL, NULL, NULL, NULL, NULL,"
        "  NULL, NULL, NULL, NULL"
        " FROM held"
        # The read's now(): the decided_at of every intent decided on it.
        " UNION ALL"
        " SELECT 'n', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, now(),"
        "  NULL, NULL, NULL, NULL"
    )


# The dedup keys of a JSON text [[symbol, side, strategy], …] ({} for its parameter), as rows.
KEYS_SQL = (
    "SELECT r->>0 AS symbol, r->>1 AS side, r->>2 AS strategy FROM jsonb_array_elements({}::text::jsonb) AS r"
)

# Paper mode: the balances the batch may move ($6 is empty otherwise), read in the same round
# trip, unlocked (the fills move them by deltas, refused below zero; key_locks runs it) or,
# LOCKED, locked after the key locks (keys first, then balances by asset; in a
# locked_transaction).
BATCH_STATE_SQL = _batch_state_sql(f"held AS ({read_balances_sql('$6')})")
BATCH_STATE_LOCKED_SQL = _batch_state_sql(f"held AS ({lock_balances_sql('$6')})")


@dataclass(frozen=True)
class BatchState:
    """What one read under the key locks sees: recorded intents, nearby active ones, the brake."""

    recorded: dict[uuid.UUID, IntentRow]
    active: list[tuple[DedupKey, datetime]]
    brake: str | None
    held: dict[str, Decimal]
    now: datetime
    """The read's now(), which the intents decided on it get as decided_at."""


class BatchRead(NamedTuple):
    """What a batch read asks for: these signals' intents, the active intents of these keys
    within the window of [earliest, latest], the brake, and the balances of these assets."""

    signal_ids: Sequence[uuid.UUID]
    keys: Sequence[DedupKey]
    earliest: datetime
    latest: datetime
    window_s: float
    assets: Sequence[str] = ()

    def args(self) -> tuple[Any, ...]:
        """The parameters $1-$6 of BATCH_STATE_SQL and BATCH_STATE_LOCKED_SQL."""
        pad = timedelta(seconds=self.window_s)
        return (
            orjson.dumps(list(self.signal_ids), default=json_default).decode(),
            orjson.dumps(list(self.keys)).decode(),
            self.earliest - pad,
            self.latest + pad,
            BRAKE_FLAG,
            list(self.assets),
        )


async def read_batch_state_locked(conn: asyncpg.Connection, read: BatchRead) -> BatchState:
    """Read, in one round trip, what `read` asks for, the paper balances locked until the
    transaction ends (an asset nobody holds yet gets its row at 0, locked too).

    Call it in a locked_transaction of read.keys: under READ COMMITTED this statement's
    snapshot then includes every intent a racing orchestrator committed under those locks
    (the balances, locked FOR UPDATE, are read as last committed, after any wait). The batch
    read without the balances locked is key_locks.lock_and_read.
    """
    return batch_state_of(await conn.fetch(BATCH_STATE_LOCKED_SQL, *read.args()))


def batch_state_of(rows: Iterable[asyncpg.Record]) -> BatchState:
    """The BatchState in the rows of a batch read (each row's `kind` says what it holds)."""
    recorded: dict[uuid.UUID, IntentRow] = {}
    active: list[tuple[DedupKey, datetime]] = []
    brake: str | None = None
    held: dict[str, Decimal] = {}
    now: datetime | None = None
    for r in rows:
        kind = r["kind"]
        if kind == "r":
            recorded[r["signal_id"]] = IntentRow(*tuple(r)[1:12])
        elif kind == "a":
            active.append(((r["symbol"], r["side"], r["strategy"]), r["emitted_at"]))
        elif kind == "h":
            held[r["symbol"]] = r["price"]
        elif kind == "n":
            now = r["decided_at"]
        elif r["enabled"]:
            brake = f"the brake is on (set by {r['changed_by']} at {r['decided_at'].isoformat()})"
    if now is None:
        raise RuntimeError("the batch read returned no now() row")
    return BatchState(recorded, active, brake, held, now)


async def insert_plans(
    conn: asyncpg.Connection,
    plans: Sequence[Plan],
    outcomes: Mapping[uuid.UUID, Outcome] | None = None,
    *,
    skip_recorded: bool = True,
    now: datetime,
    with_ctes: str = "",
    with_args: Sequence[Any] = (),
    commit: Callable[..., Awaitable[object]] | None = None,
) -> list[IntentRow]:
    """Insert one intent per plan: its own decision, else its order's outcome, else PENDING.

    skip_recorded: a signal already recorded is left alone (ON CONFLICT DO NOTHING); without
    it a recorded signal raises, rolling back whatever the transaction did for it (its order).
    now: the batch read's now() (BatchState.now), written as the decided_at of every decided
    row; without skip_recorded every row is then known to be inserted with it, so none is
    sent back.
    with_ctes/with_args: data-modifying CTEs (parameters from $1) run in the same statement,
    e.g. the paper fills of these intents: one round trip for both.
    commit: how to run the statement when it returns no rows (without skip_recorded), e.g.
    KeyLocks.commit_and_release bound to conn, which also lets the batch's key locks go in
    the same round trip; conn.execute otherwise.
    """
    if not plans:
        return []
    found = outcomes or {}
    decisions: list[Decision | None] = []
    extra: list[Outcome | None] = []
    for p in plans:
        outcome = found.get(p.intent_id) if p.decision is None else None
        extra.append(outcome)
        decisions.append(p.decision or (outcome.decision if outcome else None))
    every_row = not skip_recorded
    conflict = " ON CONFLICT (signal_id) DO NOTHING" if skip_recorded else ""
    sql = f"{INSERT_INTENTS_SQL}{conflict}" + ("" if every_row else " RETURNING signal_id, decided_at")
    if with_ctes:
        shift = len(with_args)
        sql = f"WITH {with_ctes} " + re.sub(r"\$(\d+)", lambda m: f"${int(m[1]) + shift}", sql)
    args = (
        *with_args,
        json_rows(
            (
                p.intent_id,
                p.signal.signal_id,
                p.signal.symbol,
                p.signal.side,
                p.signal.strategy,
                p.signal.source,
                str(p.signal.price),
                d.status if d else IntentStatus.PENDING,
                d.decision_type if d else None,
                d.reason_code if d else None,
                d.reason_message if d else None,
                p.signal.emitted_at,
                None if o is None or o.quantity is None else str(o.quantity),
                o.exchange_order_id if o else None,
                o.error_message if o else None,
            )
            for p, d, o in zip(plans, decisions, extra, strict=True)
        ),
        now,
    )
    sent = zip(plans, decisions, extra, strict=True)
    written: Iterable[tuple[Plan, Decision | None, Outcome | None, datetime | None]]
    if every_row:
        await (commit or conn.execute)(sql, *args)
        written = ((p, d, o, now if d else None) for p, d, o in sent)
    else:
        # Only the rows inserted come back, with the server's time.
        by_signal = {p.signal.signal_id: (p, d, o) for p, d, o in sent}
        written = (
            (*by_signal[signal_id], decided_at) for signal_id, decided_at in await conn.fetch(sql, *args)
        )
    out: list[IntentRow] = []
    # The enum members themselves (StrEnum: each is its value as a str): `.value` is a property
    # in Python, four a row.
    for p, d, o, decided_at in written:
        out.append(
            IntentRow(
                p.intent_id,
                p.signal.signal_id,
                p.signal.symbol,
                p.signal.side,
                p.signal.price,
                d.status if d else IntentStatus.PENDING,
                d.decision_type if d else None,
                d.reason_code if d else None,
                d.reason_message if d else None,
                o.exchange_order_id if o else None,
                decided_at,
            )
        )
    return out


# One row per plan, sent as JSON (shared.db.json_rows): column k of row r is r->>k. The
# idempotency key is derived from the id here (exchanges.base.client_order_id; the table's
# CHECK holds the two equal), from the id's canonical text as orjson writes it.
INSERT_INTENTS_SQL = (
    "INSERT INTO order_intents (id, signal_id, idempotency_key, symbol, side, strategy, source,"
    " price, status, decision_type, reason_code, reason_message, emitted_at, decided_at,"
    " quantity, exchange_order_id, error_message)"
    " SELECT (r->>0)::uuid, (r->>1)::uuid, 'if-' || replace(r->>0, '-', ''), r->>2, r->>3, r->>4,"
    "  r->>5, (r->>6)::numeric, r->>7, r->>8, r->>9, r->>10, (r->>11)::timestamptz,"
    "  CASE WHEN r->>7 <> 'PENDING' THEN $2::timestamptz END, (r->>12)::numeric, r->>13, r->>14"
    " FROM jsonb_array_elements($1::text::jsonb) AS r"
)


class Outcome(NamedTuple):
    """The decision for one PENDING intent after its order was tried."""

    intent_id: uuid.UUID
    decision: Decision
    quantity: Decimal | None
    exchange_order_id: str | None
    error_message: str | None


async def record_outcomes(conn: asyncpg.Connection, outcomes: Sequence[Outcome]) -> list[IntentRow]:
    """Write decisions onto PENDING intents (a racing writer that came first wins)."""
    if not outcomes:
        return []
    rows = await conn.fetch(
        "UPDATE order_intents i SET status = u.status, decision_type = u.decision_type,"
        " reason_code = u.reason_code, reason_message = u.reason_message, quantity = u.quantity,"
        " exchange_order_id = u.order_id, error_message = u.error, decided_at = now(), updated_at = now()"
        " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[],"
        "  $7::text[], $8::text[]) AS u(id, status, decision_type, reason_code, reason_message,"
        "  quantity, order_id, error)"
        " WHERE i.id = u.id AND i.status = 'PENDING' RETURNING "
        + ", ".join(f"i.{c.strip()}" for c in _COLUMNS.split(",")),
        [o.intent_id for o in outcomes],
        [o.decision.status.value for o in outcomes],
        [o.decision.decision_type.value for o in outcomes],
        [o.decision.reason_code.value for o in outcomes],
        [o.decision.reason_message for o in outcomes],
        [o.quantity for o in outcomes],
        [o.exchange_order_id for o in outcomes],
        [o.error_message for o in outcomes],
    )
    return [_row(r) for r in rows]


async def fetch_by_id(conn: asyncpg.Connection, intent_ids: Sequence[uuid.UUID]) -> list[IntentRow]:
    """Return intents by id."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM order_intents WHERE id = ANY($1::uuid[])", list(intent_ids)
    )
    return [_row(r) for r in rows]
