"""A real exchange through ccxt's async client: market orders keyed by the intent's client order id,
with lost answers looked up rather than repeated."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import ccxt.async_support as ccxt_async
from ccxt.base import errors as ccxt_errors

from services.orchestrator.exchanges.base import OrderRequest, OrderResult
from services.orchestrator.exchanges.errors import (
    classify,
    is_duplicate,
    outcome_unknown,
    retry_when_absent,
)
from shared.events import FailureClass
from shared.logging import get_logger, register_secrets

log = get_logger(__name__)

# Exchanges whose fetch_order takes the client order id (origClientOrderId) and answers
# OrderNotFound when it has no such order; others are searched in their order lists.
_LOOKUP_BY_CLIENT_ID = {"binance", "binanceus"}
# Spot only: without this binance also loads futures and options markets from other hosts.
_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {"defaultType": "spot", "fetchMarkets": {"types": ["spot"]}, "fetchMargins": False},
    "binanceus": {"defaultType": "spot", "fetchMarkets": {"types": ["spot"]}, "fetchMargins": False},
}
_DEAD_STATUSES = {"canceled", "cancelled", "rejected", "expired"}


def rebase_urls(urls: Any, base: str) -> Any:
    """Point every URL in ccxt's urls['api'] (a string or nested dict) at base, keeping each path."""
    if isinstance(urls, str):
        target, parts = urlsplit(base.rstrip("/")), urlsplit(urls)
        path = target.path + parts.path
        return urlunsplit((target.scheme, target.netloc, path, parts.query, parts.fragment))
    if isinstance(urls, Mapping):
        return {key: rebase_urls(value, base) for key, value in urls.items()}
    return urls


def unified_symbol(symbol: str, markets: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Map BTC_USDT, BTC-USDT, BTC/USDT or BTCUSDT to the loaded spot market's symbol, or None."""
    spot = {s: m for s, m in markets.items() if m.get("spot", True)}
    text = symbol.strip().upper()
    for sep in ("_", "-", "/"):
        if sep in text:
            base, quote = text.split(sep, 1)
            candidate = f"{base}/{quote}"
            return candidate if candidate in spot else None
    for name, market in spot.items():
        if str(market.get("id", "")).upper() == text:
            return name
        if f"{market.get('base', '')}{market.get('quote', '')}".upper() == text:
            return name
    return None


def exchange_client_id(exchange_id: str, client_order_id: str) -> str:
    """Fit the client order id into the exchange's allowed form (okx: 1-32 letters and digits)."""
    if exchange_id == "okx":
        return client_order_id.replace("-", "")[-32:]
    return client_order_id


@dataclass(frozen=True)
class _Lookup:
    order: dict[str, Any] | None = None
    absent: bool = False
    error: str = ""


class CcxtExchange:
    """Market orders on a ccxt exchange; one order per client order id, even across lost answers."""

    def __init__(
        self,
        exchange_id: str,
        api_key: str,
        secret: str,
        *,
        sandbox: bool = False,
        api_url: str | None = None,
        lookup_attempts: int = 4,
        lookup_backoff: float = 0.5,
        timeout_ms: int = 10_000,
    ) -> None:
        if exchange_id not in ccxt_async.exchanges:
            raise ValueError(
                f"EXCHANGE={exchange_id!r} is not a ccxt exchange id (for example binance, kraken, okx)"
            )
        if not api_key or not secret:
            raise ValueError("live trading needs EXCHANGE_API_KEY and EXCHANGE_SECRET")
        register_secrets([api_key, secret])
        self.name = exchange_id
        self._api_key, self._secret = api_key, secret
        self._sandbox, self._api_url = sandbox, api_url
        self._lookup_attempts = max(1, lookup_attempts)
        self._lookup_backoff = lookup_backoff
        self._timeout_ms = timeout_ms
        self._client: Any = None

    async def start(self) -> None:
        """Create the ccxt client, load markets, and log which exchange and account it trades on."""
        options = dict(_OPTIONS.get(self.name, {}))
        if self.name in _LOOKUP_BY_CLIENT_ID:
            # Binance drops a request older than recvWindow: one we gave up on cannot land later.
            options["recvWindow"] = min(self._timeout_ms, 60_000)
        cls = getattr(ccxt_async, self.name)
        client = cls(
            {
                "apiKey": self._api_key,
                "secret": self._secret,
                "timeout": self._timeout_ms,
                "enableRateLimit": True,
                "options": options,
            }
        )
        if self._sandbox:
            client.set_sandbox_mode(True)
        if self._api_url:
            client.urls["api"] = rebase_urls(client.urls["api"], self._api_url)
        self._client = client
        try:
            await client.load_markets()
        except ccxt_errors.BaseError as exc:
            await self.close()
            _, message = classify(exc)
            raise RuntimeError(f"cannot load {self.name} markets: {message}") from exc
        log.info(
            "live exchange ready",
            exchange=self.name,
            sandbox=self._sandbox,
            api_url=self._api_url or "default",
            account=self._api_key[:4] + "…",
            markets=len(client.markets or {}),
        )

    async def close(self) -> None:
        """Close the ccxt client's HTTP session."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def place_orders(self, orders: Sequence[OrderRequest]) -> list[OrderResult]:
        """Place each order at most once, in turn; results in the same order."""
        return [await self.place(order) for order in orders]

    async def place(self, order: OrderRequest) -> OrderResult:
        """Place one market order (or find it, when resumed or when its answer was lost)."""
        if self._client is None:
            raise RuntimeError("CcxtExchange.start() must be awaited before placing orders")
        symbol = unified_symbol(order.symbol, self._client.markets or {})
        if symbol is None:
            return OrderResult.failed(
                FailureClass.INVALID_ORDER,
                f"{order.symbol} is not a spot market on {self.name}",
            )
        sized = self._size(order, symbol)
        if isinstance(sized, OrderResult):
            return sized
        client_id = exchange_client_id(self.name, order.client_order_id)
        if order.resume:
            found = await self._lookup(symbol, client_id)
            if found.order is not None:
                return self._placed(found.order, "found on resume")
            if not found.absent:
                return OrderResult.undetermined(
                    f"{client_id} not yet confirmed or denied by {self.name}: {found.error}"
                )
        return await self._send(symbol, order, sized, client_id)

    async def _send(self, symbol: str, order: OrderRequest, amount: float, client_id: str) -> OrderResult:
        side = order.side.value.lower()
        # Exchanges flagged createMarketBuyOrderRequiresPrice size a market buy as amount x price.
        needs_price = side == "buy" and self._client.options.get("createMarketBuyOrderRequiresPrice")
        price = float(order.price) if needs_price else None
        for attempt in (1, 2):
            try:
                created = await self._client.create_order(
                    symbol, "market", side, amount, price, {"clientOrderId": client_id}
                )
                return self._placed(created, "order placed")
            except ccxt_errors.BaseError as exc:
                if not (outcome_unknown(exc) or is_duplicate(exc)):
                    return OrderResult.failed(*classify(exc))
                log.warning(
                    "order outcome unknown; looking it up",
                    exchange=self.name,
                    client_order_id=client_id,
                    error=type(exc).__name__,
                )
                found = await self._lookup(symbol, client_id)
                if found.order is not None:
                    return self._placed(found.order, f"found after {type(exc).__name__}")
                if not found.absent:
                    return OrderResult.undetermined(
                        f"{client_id}: {type(exc).__name__} and lookups failed ({found.error}); "
                        "retry with resume"
                    )
                if attempt == 1 and retry_when_absent(exc):
                    continue
                failure, message = classify(exc)
                return OrderResult.failed(failure, f"{message}; {self.name} has no such order")
        raise AssertionError("unreachable: the loop returns on its last attempt")

    def _size(self, order: OrderRequest, symbol: str) -> float | OrderResult:
        market = self._client.markets[symbol]
        try:
            raw = order.notional / order.price
            amount = Decimal(self._client.amount_to_precision(symbol, float(raw)))
        except (ccxt_errors.InvalidOrder, InvalidOperation, ZeroDivisionError) as exc:
            return OrderResult.failed(
                FailureClass.INVALID_ORDER,
                f"{order.notional} {market.get('quote')} at {order.price} is below the smallest "
                f"{symbol} amount on {self.name} ({exc}); raise ORDER_NOTIONAL_USD",
            )
        cost = amount * order.price
        limits = market.get("limits") or {}
        problem = _limit_problem(amount, cost, limits)
        if problem:
            return OrderResult.failed(
                FailureClass.INVALID_ORDER,
                f"{symbol} order of {amount} ({cost} {market.get('quote')}) {problem} on "
                f"{self.name}; adjust ORDER_NOTIONAL_USD",
                amount,
            )
        return float(amount)

    async def _lookup(self, symbol: str, client_id: str) -> _Lookup:
        error = ""
        for attempt in range(self._lookup_attempts):
            if attempt:
                await asyncio.sleep(self._lookup_backoff * 2 ** (attempt - 1))
            try:
                found = await self._find(symbol, client_id)
            except ccxt_errors.OrderNotFound:
                return _Lookup(absent=True)
            except ccxt_errors.BaseError as exc:
                error = f"{type(exc).__name__}: {classify(exc)[1]}"
                continue
            return _Lookup(order=found) if found is not None else _Lookup(absent=True)
        return _Lookup(error=f"{self._lookup_attempts} lookups failed, last {error}")

    async def _find(self, symbol: str, client_id: str) -> dict[str, Any] | None:
        client = self._client
        if self.name in _LOOKUP_BY_CLIENT_ID:
            order: dict[str, Any] = await client.fetch_order(None, symbol, {"origClientOrderId": client_id})
            return order
        if client.has.get("fetchOrders"):
            candidates = await client.fetch_orders(symbol)
        else:
            candidates = await client.fetch_open_orders(symbol)
            candidates += await client.fetch_closed_orders(symbol)
        return next((o for o in candidates if o.get("clientOrderId") == client_id), None)

    def _placed(self, order: dict[str, Any], how: str) -> OrderResult:
        filled = _decimal(order.get("filled"))
        amount = _decimal(order.get("amount"))
        status = str(order.get("status") or "").lower()
        order_id = str(order.get("id"))
        if status in _DEAD_STATUSES and not filled:
            return OrderResult.failed(
                FailureClass.UNKNOWN,
                f"{self.name} order {order_id} ended {status} with nothing filled",
                Decimal(0),
            )
        quantity = filled if filled else amount
        return OrderResult.ok(
            order_id,
            quantity if quantity is not None else Decimal(0),
            f"{how}: {self.name} order {order_id}, {status or 'status unknown'}",
        )


def _limit_problem(amount: Decimal, cost: Decimal, limits: Mapping[str, Any]) -> str:
    checks = (
        ("amount", amount, "amount"),
        ("market", amount, "market order amount"),
        ("cost", cost, "cost"),
    )
    for key, value, label in checks:
        bounds = limits.get(key) or {}
        low, high = _decimal(bounds.get("min")), _decimal(bounds.get("max"))
        if low is not None and low > 0 and value < low:
            return f"is below the minimum {label} {low}"
        if high is not None and high > 0 and value > high:
            return f"is above the maximum {label} {high}"
    return ""


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None
