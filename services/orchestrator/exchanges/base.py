"""The Exchange protocol every order venue implements, and the order shapes it speaks."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import NamedTuple, Protocol

from shared.events import FailureClass, Side


def client_order_id(intent_id: uuid.UUID) -> str:
    """Derive the client order id from the intent id (36 chars of [A-Za-z0-9-], Binance's limit).

    It is the intent's idempotency_key, which a CHECK on order_intents holds to exactly this.
    """
    return f"if-{intent_id.hex}"


class OrderRequest(NamedTuple):
    """One market order to place for one intent."""

    intent_id: uuid.UUID
    signal_id: uuid.UUID
    symbol: str
    side: Side
    price: Decimal
    notional: Decimal
    resume: bool = False
    """True when this intent was sent before and its outcome was never recorded: look it up first."""

    @property
    def client_order_id(self) -> str:
        return client_order_id(self.intent_id)


class OrderResult(NamedTuple):
    """What became of one order: placed, failed with a class, or still unknown."""

    placed: bool
    exchange_order_id: str | None = None
    quantity: Decimal | None = None
    failure: FailureClass | None = None
    message: str = ""
    unknown: bool = False
    """The exchange neither confirmed nor denied the order: keep the intent in progress, retry later."""

    @classmethod
    def ok(cls, order_id: str, quantity: Decimal, message: str = "order placed") -> OrderResult:
        return cls(placed=True, exchange_order_id=order_id, quantity=quantity, message=message)

    @classmethod
    def failed(cls, failure: FailureClass, message: str, quantity: Decimal | None = None) -> OrderResult:
        return cls(placed=False, failure=failure, message=message, quantity=quantity)

    @classmethod
    def undetermined(cls, message: str) -> OrderResult:
        return cls(placed=False, unknown=True, message=message)


class Exchange(Protocol):
    """An order venue: the paper exchange or a real one through ccxt."""

    name: str

    async def start(self) -> None:
        """Open connections, load markets; raise with a clear message when misconfigured."""

    async def close(self) -> None:
        """Release connections."""

    async def place_orders(self, orders: Sequence[OrderRequest]) -> list[OrderResult]:
        """Place each order at most once (idempotent by client order id); results in the same order."""
