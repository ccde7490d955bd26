"""The ccxt exchange against the Binance stand-in: real ccxt, real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest

from services.orchestrator.exchanges.base import OrderRequest, OrderResult
from services.orchestrator.exchanges.ccxt_exchange import CcxtExchange
from shared.events import FailureClass, Side
from tests.support.eventually import eventually
from tests.support.exchange_standin import ExchangeStandin

LOOKUPS = 3
BTC_PRICE = Decimal("50000")


@pytest.fixture
async def standin() -> AsyncIterator[ExchangeStandin]:
    server = ExchangeStandin(
        balances={"USDT": Decimal("10000"), "BTC": Decimal("1")}, api_key="test-key-1234"
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def exchange(standin: ExchangeStandin) -> AsyncIterator[CcxtExchange]:
    ex = CcxtExchange(
        "binance",
        "test-key-1234",
        "test-secret-5678",
        api_url=standin.url,
        timeout_ms=1500,
        lookup_attempts=LOOKUPS,
        lookup_backoff=0.05,
    )
    await ex.start()
    yield ex
    await ex.close()


def order(
    symbol: str = "BTC_USDT",
    side: Side = Side.BUY,
    notional: str = "100",
    resume: bool = False,
    intent_id: uuid.UUID | None = None,
) -> OrderRequest:
    return OrderRequest(
        intent_id=intent_id or uuid.uuid4(),
        signal_id=uuid.uuid4(),
        symbol=symbol,
        side=side,
        price=BTC_PRICE,
        notional=Decimal(notional),
        resume=resume,
    )


async def place(exchange: CcxtExchange, request: OrderRequest) -> OrderResult:
    [result] = await exchange.place_orders([request])
    return result


def posts_for(standin: ExchangeStandin, client_id: str) -> int:
    return sum(1 for p in standin.order_posts if p.get("newClientOrderId") == client_id)


async def test_places_one_order_with_the_client_id_of_the_intent(
    exchange: CcxtExchange, standin: ExchangeStandin
) -> None:
    request = order()
    result = await place(exchange, request)
    assert result.placed and not result.unknown
    [accepted] = standin.orders
    assert accepted.client_order_id == f"if-{request.intent_id.hex}"
    assert result.exchange_order_id == str(accepted.order_id)
    assert result.quantity == Decimal("0.002")
    assert standin.balances["USDT"] == Decimal("9900")
    assert standin.balances["BTC"] == Decimal("1.002")


@pytest.mark.parametrize("symbol", ["BTC_USDT", "BTC-USDT", "BTC/USDT", "BTCUSDT"])
async def test_contract_symbol_forms_reach_the_same_market(
    exchange: CcxtExchange, standin: ExchangeStandin, symbol: str
) -> None:
    result = await place(exchange, order(symbol=symbol, side=Side.SELL))
    assert result.placed
    assert [o.symbol for o in standin.orders] == ["BTCUSDT"]
    assert standin.balances["BTC"] == Decimal("0.998")


async def test_several_orders_answer_in_request_order(
    exchange: CcxtExchange, standin: ExchangeStandin
) -> None:
    requests = [order(notional="100"), order(symbol="DOGE_USDT"), order(notional="250")]
    results = await exchange.place_orders(requests)
    assert [r.placed for r in results] == [True, False, True]
    assert results[1].failure is FailureClass.INVALID_ORDER
    assert [o.client_order_id for o in standin.orders] == [
        requests[0].client_order_id,
        requests[2].client_order_id,
    ]


async def test_answer_lost_after_accept_is_found_not_repeated(
    exchange: CcxtExchange, standin: ExchangeStandin
) -> None:
    standin.inject("accept_then_timeout")
    request = order()
    result = await place(exchange, request)
    [accepted] = standin.orders_for(request.client_order_id)
    assert result.placed
    assert result.exchange_order_id == str(accepted.order_id)
    assert posts_for(standin, request.client_order_id) == 1
    assert len(standin.orders) == 1


async def test_request_lost_before_accept_is_sent_once_more(
    exchange: CcxtExchange, standin: ExchangeStandin
) -> None:
    standin.inject("timeout_before_accept")
    request = order()
    result = await place(exchange, request)
    assert result.placed
    assert len(standin.orders_for(request.client_order_id)) == 1
    assert posts_for(standin, request.client_order_id) == 2


async def test_request_lost_twice_fails_timeout_with_no_order(
    exchange: CcxtExchange, standin: ExchangeStandin
) -> None:
    standin.inject("timeout_before_accept", count=2)
    request = order()
    result = await place(exchange, request)
    assert not result.placed and not result.unknown
    assert result.failure is FailureClass.TIMEOUT
    assert "no such order" in result.message
    assert standin.orders == []


async def test_resume_after_an_accepted_order_places_nothing_new(
    exchange: CcxtExchange, standin: ExchangeStandin
) -> None:
    first = order()
    placed = await place(exchange, first)
    again = order(intent_id=first.intent_id, resume=True)
    resumed = await place(exchange, again)
    assert resumed.placed
    assert resumed.exchange_order_id == placed.exchange_order_id
    assert len(standin.orders) == 1
    assert posts_for(standin, first.client_order_id) == 1


async def test_resume_of_an_order_never_received_places_it(
    exchange: CcxtExchange, standin: ExchangeStandin
) -> None:
    request = order(resume=True)
    result = await place(exchange, request)
    assert result.placed
    assert len(standin.orders_for(request.client_order_id)) == 1


async def test_lookups_failing_leave_the_outcome_unknown_until_resumed(
    exchange: CcxtExchange, standin: ExchangeStandin
) -> None:
    standin.inject("accept_then_timeout")
    standin.inject("query_500", count=LOOKUPS)
    request = order()
    result = await place(exchange, request)
    assert result.unknown and not result.placed and result.failure is None
    assert request.client_order_id in result.message

    resumed = await place(exchange, order(intent_id=request.intent_id, resume=True))
    [accepted] = standin.orders_for(request.client_order_id)
    assert resumed.placed and resumed.exchange_order_id == str(accepted.order_id)
    assert posts_for(standin, request.client_order_id) == 1


async def test_resume_with_lookups_failing_stays_unknown_and_sends_nothing(
    exchange: CcxtExchange, standin: ExchangeStandin
) -> None:
    standin.inject("query_500", count=LOOKUPS)
    result = await place(exchange, order(resume=True))
    assert result.unknown
    assert standin.order_posts == []


@pytest.mark.parametrize(
    ("fault", "failure", "words"),
    [
        ("insufficient", FailureClass.INSUFFICIENT_FUNDS, "insufficient"),
        ("500", FailureClass.EXCHANGE_UNAVAILABLE, "no such order"),
        ("429", FailureClass.RATE_LIMITED, "rate limited"),
        ("418", FailureClass.RATE_LIMITED, "rate limited"),
        ("maintenance", FailureClass.EXCHANGE_UNAVAILABLE, "maintenance"),
        ("invalid", FailureClass.INVALID_ORDER, "LOT_SIZE"),
        ("auth", FailureClass.UNKNOWN, "EXCHANGE_API_KEY"),
        ("permission", FailureClass.UNKNOWN, "permissions"),
    ],
)
async def test_each_exchange_refusal_ends_in_its_failure_class(
    exchange: CcxtExchange, standin: ExchangeStandin, fault: str, failure: FailureClass, words: str
) -> None:
    standin.inject(fault)
    result = await place(exchange, order())
    assert not result.placed and not result.unknown
    assert result.failure is failure
    assert words in result.message
    assert standin.orders == []


async def test_real_balance_shortfall_is_insufficient_funds(
    exchange: CcxtExchange, standin: ExchangeStandin
) -> None:
    result = await place(exchange, order(side=Side.SELL, notional="60000"))
    assert result.failure is FailureClass.INSUFFICIENT_FUNDS
    assert standin.orders == [] and standin.balances["BTC"] == Decimal("1")


@pytest.mark.parametrize("notional", ["1", "0.0001"])
async def test_below_the_exchange_minimum_fails_without_calling_it(
    exchange: CcxtExchange, standin: ExchangeStandin, notional: str
) -> None:
    result = await place(exchange, order(notional=notional))
    assert result.failure is FailureClass.INVALID_ORDER
    assert "ORDER_NOTIONAL_USD" in result.message
    assert standin.order_posts == []


async def test_unknown_symbol_fails_without_calling_the_exchange(
    exchange: CcxtExchange, standin: ExchangeStandin
) -> None:
    result = await place(exchange, order(symbol="DOGE_USDT"))
    assert result.failure is FailureClass.INVALID_ORDER
    assert "DOGE_USDT" in result.message
    assert standin.order_posts == []


async def test_start_fails_clearly_when_the_exchange_is_unreachable(
    standin: ExchangeStandin,
) -> None:
    url = standin.url
    await standin.stop()
    ex = CcxtExchange("binance", "k-1234", "s-5678", api_url=url, timeout_ms=1500)
    with pytest.raises(RuntimeError, match="cannot load binance markets"):
        await ex.start()
    await ex.close()


def test_unknown_exchange_id_is_refused_with_the_variable_name() -> None:
    with pytest.raises(ValueError, match="EXCHANGE='nosuchexchange'"):
        CcxtExchange("nosuchexchange", "k", "s")


async def test_standin_requires_the_api_key_header(standin: ExchangeStandin) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{standin.url}/api/v3/account") as response:
            assert response.status == 401
            assert (await response.json())["code"] == -2014
        async with http.get(
            f"{standin.url}/api/v3/account", headers={"X-MBX-APIKEY": "test-key-1234"}
        ) as response:
            assert response.status == 200
            balances = {b["asset"]: b["free"] for b in (await response.json())["balances"]}
            assert balances["USDT"] == "10000.00000000"


async def test_standin_runs_as_its_own_process_with_http_faults() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.exchange_standin",
        "--port",
        "0",
        "--fault-delay",
        "5",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            await http.post(f"{url}/standin/faults", json={"kind": "accept_then_timeout"})
            ex = CcxtExchange(
                "binance", "any-key", "any-secret", api_url=url, timeout_ms=1500, lookup_backoff=0.05
            )
            await ex.start()
            request = order()
            try:
                result = await place(ex, request)
            finally:
                await ex.close()

            async def listed() -> list[dict[str, object]]:
                async with http.get(f"{url}/standin/orders") as response:
                    orders: list[dict[str, object]] = (await response.json())["orders"]
                    return orders

            orders = await eventually(listed, what="the stand-in lists the order")
        assert result.placed
        assert [o["clientOrderId"] for o in orders] == [request.client_order_id]
        assert result.exchange_order_id == str(orders[0]["orderId"])
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
