"""ccxt exceptions → failure classes, and the pure helpers of the ccxt exchange (no network)."""

from __future__ import annotations

import inspect

import pytest
from ccxt.base import errors as e

from services.orchestrator.exchanges.ccxt_exchange import (
    exchange_client_id,
    rebase_urls,
    unified_symbol,
)
from services.orchestrator.exchanges.errors import (
    classify,
    is_duplicate,
    outcome_unknown,
    retry_when_absent,
)
from shared.events import FailureClass as F

EXPECTED: dict[type[BaseException], F] = {
    e.InsufficientFunds: F.INSUFFICIENT_FUNDS,
    e.InvalidOrder: F.INVALID_ORDER,
    e.OrderNotFound: F.INVALID_ORDER,
    e.OrderNotCached: F.INVALID_ORDER,
    e.OrderImmediatelyFillable: F.INVALID_ORDER,
    e.OrderNotFillable: F.INVALID_ORDER,
    e.DuplicateOrderId: F.INVALID_ORDER,
    e.ContractUnavailable: F.INVALID_ORDER,
    e.BadSymbol: F.INVALID_ORDER,
    e.BadRequest: F.INVALID_ORDER,
    e.MarketClosed: F.INVALID_ORDER,
    e.RateLimitExceeded: F.RATE_LIMITED,
    e.DDoSProtection: F.RATE_LIMITED,
    e.ExchangeNotAvailable: F.EXCHANGE_UNAVAILABLE,
    e.OnMaintenance: F.EXCHANGE_UNAVAILABLE,
    e.RequestTimeout: F.TIMEOUT,
    e.AuthenticationError: F.UNKNOWN,
    e.PermissionDenied: F.UNKNOWN,
    e.AccountNotEnabled: F.UNKNOWN,
    e.AccountSuspended: F.UNKNOWN,
    e.InvalidNonce: F.UNKNOWN,
    e.ChecksumError: F.UNKNOWN,
    e.NetworkError: F.UNKNOWN,
    e.ExchangeError: F.UNKNOWN,
    e.OperationFailed: F.UNKNOWN,
    e.BadResponse: F.UNKNOWN,
    e.NullResponse: F.UNKNOWN,
    e.NotSupported: F.UNKNOWN,
    e.ArgumentsRequired: F.UNKNOWN,
    e.OperationRejected: F.UNKNOWN,
    e.BaseError: F.UNKNOWN,
}

ALL_CCXT_ERRORS = [cls for _, cls in inspect.getmembers(e, inspect.isclass) if issubclass(cls, e.BaseError)]


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_each_ccxt_error_maps_to_its_failure_class(cls: type[BaseException]) -> None:
    failure, message = classify(cls('binance {"code":-1,"msg":"boom"}'))
    assert failure is EXPECTED[cls]
    assert cls.__name__ in message
    assert "boom" in message


@pytest.mark.parametrize("cls", ALL_CCXT_ERRORS, ids=lambda c: c.__name__)
def test_every_ccxt_error_gets_a_class_and_a_message(cls: type[BaseException]) -> None:
    failure, message = classify(cls())
    assert isinstance(failure, F)
    assert message and cls.__name__ in message


def test_credentials_errors_say_what_to_check() -> None:
    assert "EXCHANGE_API_KEY" in classify(e.AuthenticationError("binance -2015"))[1]
    assert "permissions" in classify(e.PermissionDenied("binance no"))[1]


def test_non_ccxt_exception_is_unknown() -> None:
    assert classify(RuntimeError("x"))[0] is F.UNKNOWN


def test_message_drops_query_strings_with_signatures() -> None:
    exc = e.ExchangeNotAvailable(
        "binance GET https://api.binance.com/api/v3/order?timestamp=1&signature=abcdef 500"
    )
    _, message = classify(exc)
    assert "signature" not in message
    assert "api/v3/order" in message


def test_message_is_bounded() -> None:
    _, message = classify(e.ExchangeError("x" * 5000))
    assert len(message) < 400


@pytest.mark.parametrize(
    ("cls", "unknown"),
    [
        (e.RequestTimeout, True),
        (e.NetworkError, True),
        (e.ExchangeNotAvailable, True),
        (e.BadResponse, True),
        (e.OperationFailed, True),
        (e.RateLimitExceeded, False),
        (e.DDoSProtection, False),
        (e.OnMaintenance, False),
        (e.InvalidNonce, False),
        (e.InsufficientFunds, False),
        (e.InvalidOrder, False),
        (e.AuthenticationError, False),
        (e.ExchangeError, False),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_outcome_unknown_only_when_the_order_may_have_landed(cls: type[BaseException], unknown: bool) -> None:
    assert outcome_unknown(cls("x")) is unknown


def test_only_timeouts_are_resent_when_absent() -> None:
    assert retry_when_absent(e.RequestTimeout("x"))
    assert not retry_when_absent(e.ExchangeNotAvailable("x"))
    assert not retry_when_absent(e.NetworkError("x"))


def test_duplicate_client_id_is_recognised() -> None:
    assert is_duplicate(e.DuplicateOrderId("x"))
    assert is_duplicate(e.InvalidOrder('binance {"code":-2010,"msg":"Duplicate order sent."}'))
    assert not is_duplicate(e.InvalidOrder('binance {"code":-2010,"msg":"Filter failure"}'))
    assert not is_duplicate(e.ExchangeError("Duplicate order sent."))


MARKETS = {
    "BTC/USDT": {"id": "BTCUSDT", "base": "BTC", "quote": "USDT", "spot": True},
    "ETH/BTC": {"id": "ETHBTC", "base": "ETH", "quote": "BTC", "spot": True},
    "BTC/USDT:USDT": {"id": "BTCUSDT", "base": "BTC", "quote": "USDT", "spot": False},
}


@pytest.mark.parametrize("text", ["BTC_USDT", "BTC-USDT", "BTC/USDT", "BTCUSDT", "btc_usdt"])
def test_contract_symbol_forms_map_to_the_spot_market(text: str) -> None:
    assert unified_symbol(text, MARKETS) == "BTC/USDT"


@pytest.mark.parametrize("text", ["DOGE_USDT", "DOGEUSDT", "USDT_BTC", "BTC", ""])
def test_unknown_symbols_map_to_none(text: str) -> None:
    assert unified_symbol(text, MARKETS) is None


def test_rebase_urls_keeps_paths_and_nesting() -> None:
    urls = {
        "public": "https://api.binance.com/api/v3",
        "sapi": "https://api.binance.com/sapi/v1",
        "nested": {"x": "https://fapi.binance.com/fapi/v1"},
        "flag": None,
    }
    out = rebase_urls(urls, "http://127.0.0.1:9999/")
    assert out == {
        "public": "http://127.0.0.1:9999/api/v3",
        "sapi": "http://127.0.0.1:9999/sapi/v1",
        "nested": {"x": "http://127.0.0.1:9999/fapi/v1"},
        "flag": None,
    }
    assert rebase_urls("https://api.kraken.com", "http://h:1/p") == "http://h:1/p"


def test_client_id_fits_the_exchange() -> None:
    cid = "if-" + "a" * 32
    assert exchange_client_id("binance", cid) == cid
    okx = exchange_client_id("okx", cid)
    assert okx.isalnum() and len(okx) <= 32
