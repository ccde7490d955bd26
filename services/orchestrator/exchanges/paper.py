"""The paper exchange: real balances in PostgreSQL, fills at the signal price, one order per client id."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

import asyncpg

from services.orchestrator.exchanges.base import OrderRequest, OrderResult
from shared.events import FailureClass, Side

QUANTITY_STEP = Decimal("0.00000001")
KNOWN_QUOTES = ("USDT", "USDC", "BUSD", "FDUSD", "TUSD", "USD", "EUR", "GBP", "BTC", "ETH", "BNB")


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


@dataclass(frozen=True)
class Fill:
    """A filled paper order: how much base moved for how much quote."""

    base: str
    quote: str
    quantity: Decimal
    quote_amount: Decimal


def fill(
    order: OrderRequest, balances: Mapping[str, Decimal], reject: frozenset[str]
) -> Fill | OrderResult:
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
        held = balances.get(quote, Decimal(0))
        if held < cost:
            return OrderResult.failed(
                FailureClass.INSUFFICIENT_FUNDS,
                f"buying {quantity} {base} needs {cost.normalize():f} {quote}, only {held.normalize():f} held",
                quantity,
            )
    else:
        held = balances.get(base, Decimal(0))
        if held < quantity:
            return OrderResult.failed(
                FailureClass.INSUFFICIENT_FUNDS,
                f"selling {quantity} {base} but only {held.normalize():f} {base} held",
                quantity,
            )
    return Fill(base, quote, quantity, cost)


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
                r["client_order_id"]: r
                for r in await conn.fetch(
                    "SELECT id, client_order_id, quantity FROM paper_orders WHERE client_order_id = ANY($1)",
                    [o.client_order_id for o in orders],
                )
            }
            assets: set[str] = set()
            for o in orders:
                try:
                    assets.update(split_symbol(o.symbol))
                except ValueError:
                    continue
            held = {
                r["asset"]: r["amount"]
                for r in await conn.fetch(
                    "SELECT asset, amount FROM paper_balances WHERE asset = ANY($1) ORDER BY asset FOR UPDATE",
                    sorted(assets),
                )
            }
            results: list[OrderResult] = []
            new_orders: list[tuple[str, OrderRequest, Fill]] = []
            for order in orders:
                previous = done.get(order.client_order_id)
                if previous is not None:
                    results.append(
                        OrderResult.ok(previous["id"], previous["quantity"], "order already filled")
                    )
                    continue
                outcome = fill(order, held, self.reject)
                if isinstance(outcome, OrderResult):
                    results.append(outcome)
                    continue
                sign = 1 if order.side is Side.BUY else -1
                held[outcome.base] = held.get(outcome.base, Decimal(0)) + sign * outcome.quantity
                held[outcome.quote] = (
                    held.get(outcome.quote, Decimal(0)) - sign * outcome.quote_amount
                )
                order_id = f"paper-{uuid.uuid4().hex}"
                new_orders.append((order_id, order, outcome))
                done[order.client_order_id] = {"id": order_id, "quantity": outcome.quantity}
                results.append(
                    OrderResult.ok(
                        order_id,
                        outcome.quantity,
                        f"paper {order.side.value} {outcome.quantity} {outcome.base} at {order.price.normalize():f}",
                    )
                )
            if new_orders:
                await conn.execute(
                    "INSERT INTO paper_orders (id, client_order_id, symbol, side, price, quantity, quote_amount)"
                    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[],"
                    " $6::numeric[], $7::numeric[])",
                    [n[0] for n in new_orders],
                    [n[1].client_order_id for n in new_orders],
                    [n[1].symbol for n in new_orders],
                    [n[1].side.value for n in new_orders],
                    [n[1].price for n in new_orders],
                    [n[2].quantity for n in new_orders],
                    [n[2].quote_amount for n in new_orders],
                )
                await conn.execute(
                    "INSERT INTO paper_balances (asset, amount) SELECT * FROM unnest($1::text[], $2::numeric[])"
                    " ON CONFLICT (asset) DO UPDATE SET amount = EXCLUDED.amount, updated_at = now()",
                    list(held),
                    list(held.values()),
                )
            return results
