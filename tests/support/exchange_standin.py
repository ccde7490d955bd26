"""A local stand-in for Binance's spot REST API: the subset ccxt calls to load markets and place,
look up and list market orders, with real balances and injectable faults.

Run in-process (`ExchangeStandin`) or as its own process:
`python -m tests.support.exchange_standin --port 0` prints `listening on http://127.0.0.1:PORT`.
Signatures are not verified; private endpoints need the X-MBX-APIKEY header (and, when the stand-in
was given an api_key, that exact key). Client order ids are unique among open orders only, as on
Binance: market orders fill at once, so a second order with a used id is accepted (and visible).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

from aiohttp import web

PLACE_FAULTS = {
    "accept_then_timeout",
    "timeout_before_accept",
    "500",
    "429",
    "418",
    "insufficient",
    "maintenance",
    "auth",
    "permission",
    "invalid",
}
QUERY_FAULTS = {"query_500", "query_timeout"}
FAULT_KINDS = PLACE_FAULTS | QUERY_FAULTS
_MSG_INSUFFICIENT = "Account has insufficient balance for requested action."


@dataclass(frozen=True)
class StandinMarket:
    """One spot market: its price and Binance's filters."""

    base: str
    quote: str
    price: Decimal
    step: Decimal = Decimal("0.00001")
    min_qty: Decimal = Decimal("0.00001")
    max_qty: Decimal = Decimal("9000")
    tick: Decimal = Decimal("0.01")
    min_notional: Decimal = Decimal("5")

    @property
    def symbol(self) -> str:
        return self.base + self.quote


DEFAULT_MARKETS = (
    StandinMarket("BTC", "USDT", Decimal("50000")),
    StandinMarket("ETH", "USDT", Decimal("2500"), step=Decimal("0.0001"), min_qty=Decimal("0.0001")),
)


@dataclass
class _Fault:
    kind: str
    remaining: int
    delay: float


@dataclass
class StandinOrder:
    """An order the stand-in accepted."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str
    quantity: Decimal
    quote_qty: Decimal
    status: str
    time_ms: int
    fills: list[dict[str, str]] = field(default_factory=list)

    def as_binance(self) -> dict[str, Any]:
        """Render as Binance's order query answer."""
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "price": "0.00000000",
            "origQty": _fmt(self.quantity),
            "executedQty": _fmt(self.quantity),
            "cummulativeQuoteQty": _fmt(self.quote_qty),
            "status": self.status,
            "timeInForce": "GTC",
            "type": "MARKET",
            "side": self.side,
            "stopPrice": "0.00000000",
            "icebergQty": "0.00000000",
            "time": self.time_ms,
            "updateTime": self.time_ms,
            "isWorking": True,
            "workingTime": self.time_ms,
            "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "NONE",
        }


class _Refused(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


class ExchangeStandin:
    """An aiohttp server speaking Binance spot for ccxt, with balances, orders and faults to inspect."""

    def __init__(
        self,
        *,
        balances: dict[str, Decimal] | None = None,
        markets: tuple[StandinMarket, ...] = DEFAULT_MARKETS,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        fault_delay: float = 60.0,
    ) -> None:
        self.balances: dict[str, Decimal] = dict(balances or {"USDT": Decimal("10000")})
        self.markets = {m.symbol: m for m in markets}
        self.orders: list[StandinOrder] = []
        self.order_posts: list[dict[str, str]] = []
        """Every POST /api/v3/order the stand-in received, refused or not."""
        self.api_key = api_key
        self.fault_delay = fault_delay
        self._host, self._port = host, port
        self._faults: list[_Fault] = []
        self._next_id = 1
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def inject(self, kind: str, count: int = 1, delay: float | None = None) -> None:
        """Make the next `count` matching requests fail as `kind` (see FAULT_KINDS)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {sorted(FAULT_KINDS)}")
        self._faults.append(_Fault(kind, count, self.fault_delay if delay is None else delay))

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        self._faults.clear()

    def orders_for(self, client_order_id: str) -> list[StandinOrder]:
        """Return the accepted orders carrying this client order id."""
        return [o for o in self.orders if o.client_order_id == client_order_id]

    async def start(self) -> str:
        """Listen on host:port (0 picks a free port) and return the base URL."""
        app = web.Application()
        app.add_routes(
            [
                web.get("/api/v3/ping", self._ping),
                web.get("/api/v3/time", self._time),
                web.get("/api/v3/exchangeInfo", self._exchange_info),
                web.get("/api/v3/account", self._account),
                web.post("/api/v3/order", self._new_order),
                web.get("/api/v3/order", self._query_order),
                web.get("/api/v3/openOrders", self._open_orders),
                web.get("/api/v3/allOrders", self._all_orders),
                web.get("/sapi/v1/capital/config/getall", self._currencies),
                web.post("/standin/faults", self._admin_faults),
                web.delete("/standin/faults", self._admin_clear_faults),
                web.get("/standin/orders", self._admin_orders),
                web.post("/standin/balances", self._admin_balances),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self._host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Release delayed answers and stop listening."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- faults

    def _take_fault(self, kinds: set[str]) -> _Fault | None:
        for fault in self._faults:
            if fault.kind in kinds and fault.remaining > 0:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    async def _stall(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    # ---- public endpoints

    async def _ping(self, _: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, _: web.Request) -> web.Response:
        return web.json_response({"serverTime": _now_ms()})

    async def _exchange_info(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": _now_ms(),
                "rateLimits": [],
                "exchangeFilters": [],
                "symbols": [_symbol_info(m) for m in self.markets.values()],
            }
        )

    # ---- private endpoints

    async def _account(self, request: web.Request) -> web.Response:
        return await self._private(request, self._account_body)

    async def _currencies(self, request: web.Request) -> web.Response:
        return await self._private(request, lambda _: _empty_list())

    async def _new_order(self, request: web.Request) -> web.Response:
        return await self._private(request, self._place)

    async def _query_order(self, request: web.Request) -> web.Response:
        return await self._private(request, self._find)

    async def _open_orders(self, request: web.Request) -> web.Response:
        return await self._private(request, self._list_open)

    async def _all_orders(self, request: web.Request) -> web.Response:
        return await self._private(request, self._list_all)

    async def _private(self, request: web.Request, handler: Any) -> web.Response:
        key = request.headers.get("X-MBX-APIKEY")
        try:
            if not key:
                raise _Refused(401, -2014, "API-key format invalid.")
            if self.api_key is not None and key != self.api_key:
                raise _Refused(401, -2015, "Invalid API-key, IP, or permissions for action.")
            params: dict[str, str] = dict(request.query)
            if request.method == "POST":
                params.update({k: str(v) for k, v in (await request.post()).items()})
            body = await handler(params)
        except _Refused as refused:
            return web.json_response({"code": refused.code, "msg": refused.msg}, status=refused.status)
        if isinstance(body, web.Response):
            return body
        return web.json_response(body)

    async def _account_body(self, _: dict[str, str]) -> dict[str, Any]:
        return {
            "makerCommission": 10,
            "takerCommission": 10,
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "updateTime": _now_ms(),
            "accountType": "SPOT",
            "balances": [
                {"asset": a, "free": _fmt(v), "locked": "0.00000000"}
                for a, v in sorted(self.balances.items())
            ],
            "permissions": ["SPOT"],
        }

    async def _place(self, params: dict[str, str]) -> dict[str, Any] | web.Response:
        self.order_posts.append(params)
        fault = self._take_fault(PLACE_FAULTS)
        if fault is not None and fault.kind != "accept_then_timeout":
            return await self._fail_place(fault)
        order = self._accept(params)
        if fault is not None:
            await self._stall(fault.delay)
        fills = order.fills
        return {**order.as_binance(), "transactTime": order.time_ms, "fills": fills}

    async def _fail_place(self, fault: _Fault) -> web.Response:
        kind = fault.kind
        if kind == "timeout_before_accept":
            await self._stall(fault.delay)
            return web.Response(status=503, text="Service Unavailable")
        if kind == "500":
            return web.Response(status=500, text="Internal Server Error")
        if kind in ("429", "418"):
            msg = "Too much request weight used; current limit is 6000 request weight per 1 MINUTE."
            return web.json_response(
                {"code": -1003, "msg": msg}, status=int(kind), headers={"Retry-After": "1"}
            )
        refusals = {
            "insufficient": (400, -2010, _MSG_INSUFFICIENT),
            "maintenance": (400, 1, "System is under maintenance."),
            "auth": (401, -2015, "Invalid API-key, IP, or permissions for action."),
            "permission": (400, -2010, "This account may not place or cancel orders."),
            "invalid": (400, -1013, "Filter failure: LOT_SIZE"),
        }
        status, code, msg = refusals[kind]
        return web.json_response({"code": code, "msg": msg}, status=status)

    def _accept(self, params: dict[str, str]) -> StandinOrder:
        market = self._market(params.get("symbol", ""))
        side = params.get("side", "")
        if side not in ("BUY", "SELL"):
            raise _Refused(
                400, -1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed."
            )
        if params.get("type") != "MARKET":
            raise _Refused(400, -1116, "Invalid orderType.")
        quantity = self._quantity(market, params)
        if quantity < market.min_qty or quantity > market.max_qty:
            raise _Refused(400, -1013, "Filter failure: LOT_SIZE")
        if quantity % market.step != 0:
            raise _Refused(400, -1013, "Filter failure: LOT_SIZE")
        cost = quantity * market.price
        if cost < market.min_notional:
            raise _Refused(400, -1013, "Filter failure: NOTIONAL")
        client_id = params.get("newClientOrderId") or f"standin-{self._next_id}"
        if any(o.client_order_id == client_id and o.status == "NEW" for o in self.orders):
            raise _Refused(400, -2010, "Duplicate order sent.")
        spend, spend_amount = (market.quote, cost) if side == "BUY" else (market.base, quantity)
        if self.balances.get(spend, Decimal(0)) < spend_amount:
            raise _Refused(400, -2010, _MSG_INSUFFICIENT)
        gain, gain_amount = (market.base, quantity) if side == "BUY" else (market.quote, cost)
        self.balances[spend] = self.balances.get(spend, Decimal(0)) - spend_amount
        self.balances[gain] = self.balances.get(gain, Decimal(0)) + gain_amount
        fill = {
            "price": _fmt(market.price),
            "qty": _fmt(quantity),
            "commission": "0.00000000",
            "commissionAsset": gain,
            "tradeId": str(self._next_id),
        }
        order = StandinOrder(
            self._next_id, client_id, market.symbol, side, quantity, cost, "FILLED", _now_ms(), [fill]
        )
        self._next_id += 1
        self.orders.append(order)
        return order

    def _market(self, symbol: str) -> StandinMarket:
        market = self.markets.get(symbol)
        if market is None:
            raise _Refused(400, -1121, "Invalid symbol.")
        return market

    def _quantity(self, market: StandinMarket, params: dict[str, str]) -> Decimal:
        try:
            if "quantity" in params:
                return Decimal(params["quantity"])
            if "quoteOrderQty" in params:
                raw = Decimal(params["quoteOrderQty"]) / market.price
                return (raw / market.step).to_integral_value(ROUND_DOWN) * market.step
        except InvalidOperation:
            raise _Refused(400, -1100, "Illegal characters found in a parameter.") from None
        raise _Refused(400, -1102, "Param 'quantity' or 'quoteOrderQty' must be sent.")

    async def _query_fault(self) -> web.Response | None:
        fault = self._take_fault(QUERY_FAULTS)
        if fault is None:
            return None
        if fault.kind == "query_timeout":
            await self._stall(fault.delay)
        return web.Response(status=500, text="Internal Server Error")

    async def _find(self, params: dict[str, str]) -> dict[str, Any] | web.Response:
        failed = await self._query_fault()
        if failed is not None:
            return failed
        market = self._market(params.get("symbol", ""))
        by_id, by_client = params.get("orderId"), params.get("origClientOrderId")
        if by_id is None and by_client is None:
            raise _Refused(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent.")
        for order in reversed(self.orders):
            if order.symbol != market.symbol:
                continue
            if str(order.order_id) == by_id or order.client_order_id == by_client:
                return order.as_binance()
        raise _Refused(400, -2013, "Order does not exist.")

    async def _list_open(self, params: dict[str, str]) -> list[dict[str, Any]] | web.Response:
        failed = await self._query_fault()
        if failed is not None:
            return failed
        symbol = params.get("symbol")
        if symbol is not None:
            self._market(symbol)
        return [
            o.as_binance()
            for o in self.orders
            if o.status == "NEW" and (symbol is None or o.symbol == symbol)
        ]

    async def _list_all(self, params: dict[str, str]) -> list[dict[str, Any]] | web.Response:
        failed = await self._query_fault()
        if failed is not None:
            return failed
        market = self._market(params.get("symbol", ""))
        return [o.as_binance() for o in self.orders if o.symbol == market.symbol]

    # ---- admin endpoints for tests in other processes

    async def _admin_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            self.inject(str(body["kind"]), int(body.get("count", 1)), body.get("delay"))
        except (KeyError, ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def _admin_clear_faults(self, _: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"ok": True})

    async def _admin_orders(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "orders": [o.as_binance() for o in self.orders],
                "order_posts": len(self.order_posts),
                "balances": {a: _fmt(v) for a, v in self.balances.items()},
            }
        )

    async def _admin_balances(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.balances.update({str(a).upper(): Decimal(str(v)) for a, v in body.items()})
        return web.json_response({"ok": True})


async def _empty_list() -> list[Any]:
    return []


def _now_ms() -> int:
    return int(time.time() * 1000)


def _fmt(value: Decimal) -> str:
    return f"{value:.8f}"


def _symbol_info(m: StandinMarket) -> dict[str, Any]:
    return {
        "symbol": m.symbol,
        "status": "TRADING",
        "baseAsset": m.base,
        "baseAssetPrecision": 8,
        "quoteAsset": m.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": _fmt(m.tick),
                "maxPrice": "1000000.00000000",
                "tickSize": _fmt(m.tick),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": _fmt(m.min_qty),
                "maxQty": _fmt(m.max_qty),
                "stepSize": _fmt(m.step),
            },
            {
                "filterType": "MARKET_LOT_SIZE",
                "minQty": "0.00000000",
                "maxQty": _fmt(m.max_qty),
                "stepSize": "0.00000000",
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": _fmt(m.min_notional),
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "NONE",
        "allowedSelfTradePreventionModes": ["NONE"],
    }


def _parse_balances(text: str) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        asset, _, amount = part.partition("=")
        out[asset.strip().upper()] = Decimal(amount.strip())
    return out


async def _serve(args: argparse.Namespace) -> None:
    standin = ExchangeStandin(
        balances=_parse_balances(args.balances),
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        fault_delay=args.fault_delay,
    )
    url = await standin.start()
    print(f"listening on {url}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await standin.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the stand-in as its own process until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(description="Binance spot REST stand-in for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--balances", default="USDT=10000", help="e.g. USDT=10000,BTC=0.5")
    parser.add_argument("--api-key", default=None, help="require this X-MBX-APIKEY")
    parser.add_argument("--fault-delay", type=float, default=60.0, help="seconds a timeout fault stalls")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
