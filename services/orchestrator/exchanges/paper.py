"""The paper exchange: real balances in PostgreSQL, fills at the signal price, one order per client id."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any, NamedTuple

import asyncpg

from services.orchestrator.exchanges.base import OrderRequest, OrderResult, client_order_id
from shared.db import json_rows
from shared.events import FailureClass, Side

QUANTITY_STEP = Decimal("0.00000001")
_ZERO = Decimal(0)
KNOWN_QUOTES = ("USDT", "USDC", "BUSD", "FDUSD", "TUSD", "USD", "EUR", "GBP", "BTC", "ETH", "BNB")


@functools.lru_cache(maxsize=1024)  # asked once per order and per batch read, of a few symbols
def split_symbol(symbol: str) -> tuple[str, str]:
    """Split BTC_USDT, BTC/USDT, BTC-USDT or BTCUSDT into (base, quote)."""
    for sep in ("_", "/", "-"):
        if sep in symbol:
            base, quote = symbol.split(sep, 1)
            return base, quote
    for quote in KNOWN_QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    raise ValueError(f"cannot tell base from quote in {symbol!r}; write it as BASE_QUOTE")


class Fill(NamedTuple):
    """A filled paper order: how much base moved for how much quote."""

    base: str
    quote: str
    quantity: Decimal
    quote_amount: Decimal


def fill(order: OrderRequest, balances: Mapping[str, Decimal], reject: frozenset[str]) -> Fill | OrderResult:
    """Decide one paper order against balances: a Fill, or a failed OrderResult."""
    if order.symbol in reject:
        return OrderResult.failed(
            FailureClass.INVALID_ORDER,
            f"{order.symbol} is refused by the paper exchange (PAPER_REJECT_SYMBOLS)",
        )
    try:
        base, quote = split_symbol(order.symbol)
    except ValueError as exc:
        return OrderResult.failed(FailureClass.INVALID_ORDER, str(exc))
    quantity = (order.notional / order.price).quantize(QUANTITY_STEP, rounding=ROUND_DOWN)
    if quantity <= 0:
        return OrderResult.failed(
            FailureClass.INVALID_ORDER,
            f"{order.notional} {quote} buys less than {QUANTITY_STEP} {base}",
        )
    cost = quantity * order.price
    if order.side is Side.BUY:
        held = balances.get(quote, _ZERO)
        if held < cost:
            return OrderResult.failed(
                FailureClass.INSUFFICIENT_FUNDS,
                f"buying {quantity} {base} needs {cost.normalize():f} {quote}, only {held.normalize():f} held",
                quantity,
            )
    else:
        held = balances.get(base, _ZERO)
        if held < quantity:
            return OrderResult.failed(
                FailureClass.INSUFFICIENT_FUNDS,
                f"selling {quantity} {base} but only {held.normalize():f} {base} held",
                quantity,
            )
    return Fill(base, quote, quantity, cost)


class PaperOrder(NamedTuple):
    """A filled paper order to write: its id, its request and the fill."""

    order_id: str
    client_order_id: str
    request: OrderRequest
    fill: Fill


def fill_batch(
    orders: Sequence[OrderRequest],
    held: dict[str, Decimal],
    reject: frozenset[str],
    done: Mapping[str, tuple[str, Decimal]] | None = None,
) -> tuple[list[OrderResult], list[PaperOrder]]:
    """Fill orders in sequence against held (updated in place); return results and the new orders.

    `done` maps client order ids already filled to (order id, quantity): those are answered
    from it and never filled twice, also when one id comes twice in a batch.
    """
    filled: dict[str, tuple[str, Decimal]] = dict(done or {})
    results: list[OrderResult] = []
    new_orders: list[PaperOrder] = []
    # The order ids' randomness, drawn once for the batch (a system call each was ~1 µs an order).
    random = os.urandom(16 * len(orders)).hex()
    for n, order in enumerate(orders):
        cid = client_order_id(order.intent_id)
        previous = filled.get(cid)
        if previous is not None:
            results.append(OrderResult.ok(previous[0], previous[1], "order already filled"))
            continue
        outcome = fill(order, held, reject)
        if isinstance(outcome, OrderResult):
            results.append(outcome)
            continue
        if order.side is Side.BUY:
            held[outcome.base] = held.get(outcome.base, _ZERO) + outcome.quantity
            held[outcome.quote] = held.get(outcome.quote, _ZERO) - outcome.quote_amount
        else:
            held[outcome.base] = held.get(outcome.base, _ZERO) - outcome.quantity
            held[outcome.quote] = held.get(outcome.quote, _ZERO) + outcome.quote_amount
        order_id = f"paper-{random[32 * n : 32 * n + 32]}"
        new_orders.append(PaperOrder(order_id, cid, order, outcome))
        filled[cid] = (order_id, outcome.quantity)
        message = f"paper {order.side} {outcome.quantity} {outcome.base} at {order.price.normalize():f}"
        results.append(OrderResult(True, order_id, outcome.quantity, None, message))  # OrderResult.ok
    return results, new_orders


def assets_of(orders: Sequence[OrderRequest]) -> list[str]:
    """The assets a batch may move, sorted (the order balances are locked in)."""
    return assets_of_symbols(o.symbol for o in orders)


def assets_of_symbols(symbols: Iterable[str]) -> list[str]:
    """The assets orders in these symbols may move, sorted."""
    assets: set[str] = set()
    for symbol in symbols:
        try:
            assets.update(split_symbol(symbol))
        except ValueError:
            continue
    return sorted(assets)


def lock_balances_sql(param: str) -> str:
    """A statement (or CTE body) locking the balances of the assets in text[] `param`, by asset.

    An upsert, not `SELECT … FOR UPDATE`: an asset nobody holds yet gets its row (0) now, so
    it is locked too. FOR UPDATE locks only rows that exist; two batches buying a new asset
    both read it as absent and the second's write overwrote the first's (a lost balance).
    DO UPDATE waits for a racing writer and returns the latest committed amount.
    """
    return (
        "INSERT INTO paper_balances (asset, amount)"
        f" SELECT a, 0 FROM unnest({param}::text[]) AS a ORDER BY a"
        " ON CONFLICT (asset) DO UPDATE SET amount = paper_balances.amount"
        " RETURNING asset, amount"
    )


def create_missing_balances_sql(param: str) -> str:
    """A statement giving each asset in text[] `param` that nobody holds yet its row (0).

    Run before the batch read that reads the balances unlocked (read_balances_sql), in a
    statement of its own that commits at once: a fill's write then finds a row to move, and
    no batch keeps a new row to itself until its commit (DO NOTHING locks no existing row).
    """
    return (
        "INSERT INTO paper_balances (asset, amount)"
        f" SELECT a, 0 FROM unnest({param}::text[]) AS a"
        " WHERE NOT EXISTS (SELECT 1 FROM paper_balances WHERE asset = a) ORDER BY a"
        " ON CONFLICT (asset) DO NOTHING"
    )


def read_balances_sql(param: str) -> str:
    """A query reading, unlocked, the balances of the assets in text[] `param` (as of its start)."""
    return f"SELECT asset, amount FROM paper_balances WHERE asset = ANY({param}::text[])"


BALANCE_NOT_NEGATIVE = "ck_paper_balances_amount_not_negative"
"""The constraint that refuses a fill written over balances that moved since they were read."""


async def lock_balances(conn: asyncpg.Connection, assets: Sequence[str]) -> dict[str, Decimal]:
    """Lock and return the balances of these assets until the transaction ends (absent ones: 0)."""
    rows = await conn.fetch(lock_balances_sql("$1"), sorted(set(assets)))
    return {r["asset"]: r["amount"] for r in rows}


@dataclass(frozen=True)
class FillWrite:
    """The writes of a filled batch, as data-modifying CTEs a caller's statement can carry.

    `ctes` holds `name AS (INSERT …)` clauses with parameters numbered from $1; `args`
    their values. Run alone with write_fills, or prepended to another statement.
    """

    ctes: str
    args: list[Any]


def fill_write(new_orders: Sequence[PaperOrder]) -> FillWrite | None:
    """Build the statement parts that insert new orders and move the balances by what they filled.

    The balances move by deltas (amount + moved), so the write is right whether or not the
    balances were locked when the fills were decided; an asset left below zero violates
    BALANCE_NOT_NEGATIVE and rolls the statement back. Unreferenced, these CTEs run after
    the statement they lead, the balances last: a batch holds the balance rows only from
    then until its commit.
    """
    if not new_orders:
        return None
    moved: dict[str, Decimal] = {}
    for n in new_orders:
        sign = 1 if n.request.side is Side.BUY else -1
        moved[n.fill.base] = moved.get(n.fill.base, _ZERO) + sign * n.fill.quantity
        moved[n.fill.quote] = moved.get(n.fill.quote, _ZERO) - sign * n.fill.quote_amount
    # A client order id already present raises (unique key): never two fills for one intent.
    return FillWrite(
        "paper_fills AS ("
        " INSERT INTO paper_orders (id, client_order_id, symbol, side, price, quantity, quote_amount)"
        " SELECT r->>0, r->>1, r->>2, r->>3, (r->>4)::numeric, (r->>5)::numeric, (r->>6)::numeric"
        " FROM jsonb_array_elements($1::text::jsonb) AS r),"
        # The balance rows exist: the batch read created the missing ones (create_missing_balances_sql,
        # or lock_balances_sql's upsert).
        # Locked in asset order first, so racing batches never wait on each other in a cycle.
        " paper_locked AS ("
        " SELECT asset FROM paper_balances WHERE asset IN"
        " (SELECT r->>0 FROM jsonb_array_elements($2::text::jsonb) AS r) ORDER BY asset FOR UPDATE),"
        " paper_moves AS ("
        " UPDATE paper_balances AS b SET amount = b.amount + (m.r->>1)::numeric, updated_at = now()"
        " FROM jsonb_array_elements($2::text::jsonb) AS m(r)"
        " WHERE b.asset = m.r->>0 AND b.asset IN (SELECT asset FROM paper_locked))",
        [
            json_rows(
                (
                    n.order_id,
                    n.client_order_id,
                    n.request.symbol,
                    n.request.side,
                    str(n.request.price),
                    str(n.fill.quantity),
                    str(n.fill.quote_amount),
                )
                for n in new_orders
            ),
            # Sorted by asset: every batch takes the balance rows in one order (no deadlock).
            json_rows((a, str(moved[a])) for a in sorted(moved)),
        ],
    )


async def write_fills(conn: asyncpg.Connection, write: FillWrite | None) -> None:
    """Run a batch's fill writes on their own (one statement)."""
    if write is not None:
        await conn.execute(f"WITH {write.ctes} SELECT 1", *write.args)


class PaperExchange:
    """Orders against balances kept in PostgreSQL; the same client order id never fills twice."""

    name = "paper"

    def __init__(
        self,
        pool: asyncpg.Pool,
        start_balances: Mapping[str, Decimal],
        reject_symbols: frozenset[str],
    ) -> None:
        self.pool = pool
        self.start_balances = dict(start_balances)
        self.reject = reject_symbols

    async def start(self) -> None:
        """Seed the start balances once; later restarts keep what trading left."""
        await self.pool.execute(
            "INSERT INTO paper_balances (asset, amount) SELECT * FROM unnest($1::text[], $2::numeric[])"
            " ON CONFLICT (asset) DO NOTHING",
            list(self.start_balances),
            list(self.start_balances.values()),
        )

    async def close(self) -> None:
        """Nothing to release: the pool belongs to the caller."""

    async def balances(self) -> dict[str, Decimal]:
        """Return every asset's balance."""
        rows = await self.pool.fetch("SELECT asset, amount FROM paper_balances")
        return {r["asset"]: r["amount"] for r in rows}

    async def place_orders(self, orders: Sequence[OrderRequest]) -> list[OrderResult]:
        """Fill a batch in one transaction, in order; an already-filled client id returns its order."""
        if not orders:
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            done = {
                r["client_order_id"]: (r["id"], r["quantity"])
                for r in await conn.fetch(
                    "SELECT id, client_order_id, quantity FROM paper_orders WHERE client_order_id = ANY($1)",
                    [o.client_order_id for o in orders],
                )
            }
            held = await lock_balances(conn, assets_of(orders))
            results, new_orders = fill_batch(orders, held, self.reject, done)
            await write_fills(conn, fill_write(new_orders))
            return results

    def fill_in(
        self, orders: Sequence[OrderRequest], held: dict[str, Decimal]
    ) -> tuple[list[OrderResult], FillWrite | None]:
        """Fill orders of intents the caller's transaction is inserting; return results and writes.

        `held`: the balances of every asset these orders may move, as the caller's transaction
        read them (read_balances_sql), or locked them (lock_balances_sql); updated in place. The
        caller runs the writes (write_fills, or as CTEs of its own insert), so intents and orders
        commit or roll back together. Read unlocked, a balance may have moved by commit time:
        should that leave an asset below zero, the writes fail on BALANCE_NOT_NEGATIVE and the
        caller decides the batch again with the balances locked. These intents never
        existed, so no order of theirs can: no lookup. Should one exist all the same, its
        unique client order id aborts the transaction.
        """
        if not orders:
            return [], None
        results, new_orders = fill_batch(orders, held, self.reject)
        return results, fill_write(new_orders)
