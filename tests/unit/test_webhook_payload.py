"""Webhook bodies: both accepted shapes, and a table of bad ones each rejected with its field named."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.signal_monitor.tradingview import (
    MAX_BODY_BYTES,
    PayloadError,
    PayloadTooLarge,
    judge_webhook,
    normalize_ticker,
    parse_webhook_body,
    secret_matches,
)
from shared.events import Side, SignalEmitted, Source

NOW = datetime.now(UTC).replace(microsecond=0)
SECRET = "s3cret-Value"
CONTRACT: dict[str, Any] = {
    "symbol": "BTC_USDT",
    "side": "BUY",
    "price": "43210.5",
    "strategy": "rsi_ema:default",
    "secret": SECRET,
}
TRADINGVIEW: dict[str, Any] = {
    "ticker": "BINANCE:BTCUSDT",
    "action": "sell",
    "close": 43210.5,
    "strategy": "tv:breakout",
    "passphrase": SECRET,
}


def body(base: dict[str, Any], **changes: Any) -> bytes:
    data = {**base, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not DROP}).encode()


DROP = object()


# --- accepted ------------------------------------------------------------------------------


def test_contract_shape_is_accepted_with_its_own_id_and_time() -> None:
    signal_id = str(uuid.uuid4())
    emitted = (NOW - timedelta(seconds=30)).isoformat()
    payload = parse_webhook_body(body(CONTRACT, signal_id=signal_id, emitted_at=emitted), now=NOW)
    assert payload.secret == SECRET and payload.shape == "contract"
    signal = payload.signal
    assert signal.signal_id == uuid.UUID(signal_id)
    assert (signal.symbol, signal.side, signal.price) == ("BTC_USDT", Side.BUY, Decimal("43210.5"))
    assert signal.strategy == "rsi_ema:default" and signal.source is Source.WEBHOOK
    assert signal.emitted_at == NOW - timedelta(seconds=30)
    assert SignalEmitted.model_validate_json(signal.to_json()) == signal


def test_contract_shape_defaults_id_time_and_strategy() -> None:
    first = parse_webhook_body(body(CONTRACT, strategy=DROP), now=NOW).signal
    second = parse_webhook_body(body(CONTRACT, strategy=DROP), now=NOW).signal
    assert first.strategy == "webhook" and first.emitted_at == NOW
    assert first.signal_id != second.signal_id


def test_tradingview_shape_is_accepted_and_normalised() -> None:
    extras = {"time": "2026-11-25T12:00:00Z", "exchange": "BINANCE", "interval": "1"}
    payload = parse_webhook_body(body(TRADINGVIEW, **extras), now=NOW)
    assert payload.secret == SECRET and payload.shape == "tradingview"
    signal = payload.signal
    assert (signal.symbol, signal.side, signal.price) == ("BTC_USDT", Side.SELL, Decimal("43210.5"))
    assert (signal.strategy, signal.source, signal.emitted_at) == (
        "tv:breakout",
        Source.WEBHOOK,
        NOW,
    )


@pytest.mark.parametrize("action", ["buy", "BUY", "Buy", "bUy"])
def test_tradingview_action_in_any_case(action: str) -> None:
    signal = parse_webhook_body(body(TRADINGVIEW, action=action, strategy=DROP), now=NOW).signal
    assert signal.side is Side.BUY and signal.strategy == "tradingview"


@pytest.mark.parametrize(
    ("ticker", "symbol"),
    [
        ("BINANCE:BTCUSDT", "BTC_USDT"),
        ("BTCUSDT", "BTC_USDT"),
        ("BINANCE:ETHBTC", "ETH_BTC"),
        ("KRAKEN:XBTUSD", "XBT_USD"),
        ("BYBIT:SOLUSDC", "SOL_USDC"),
        ("BINANCE:BTCFDUSD", "BTC_FDUSD"),
        ("COINBASE:BTC-USD", "BTC-USD"),
        ("BTC_USDT", "BTC_USDT"),
        ("SPX", "SPX"),
        ("USDT", "USDT"),
    ],
)
def test_normalize_ticker(ticker: str, symbol: str) -> None:
    assert normalize_ticker(ticker) == symbol


def test_secret_comparison() -> None:
    assert secret_matches(SECRET, SECRET)
    assert not secret_matches(SECRET + "x", SECRET)
    assert not secret_matches("", SECRET)
    assert not secret_matches(None, SECRET)
    assert not secret_matches(SECRET, None) and not secret_matches("", "")
    assert secret_matches("pässwörd", "pässwörd")


# --- rejected ------------------------------------------------------------------------------

NESTED = ("[" * 30_000 + "]" * 30_000).encode()
BAD: list[tuple[str, bytes, str, str]] = [
    ("not json", b"buy BTC please", "body", "not valid JSON"),
    ("empty", b"", "body", "not valid JSON"),
    ("array", b'[{"symbol": "BTC_USDT"}]', "body", "JSON object, not a list"),
    ("string", b'"BUY BTC_USDT"', "body", "JSON object, not a str"),
    ("null", b"null", "body", "JSON object, not a null"),
    ("not utf-8", b'{"symbol": "\xff\xfe"}', "body", "UTF-8"),
    ("nested", NESTED, "body", "nested too deeply"),
    ("duplicate key", b'{"side": "BUY", "side": "SELL"}', "side", "more than once"),
    ("missing symbol", body(CONTRACT, symbol=DROP), "symbol", "required"),
    ("missing side", body(CONTRACT, side=DROP), "side", "required"),
    ("missing price", body(CONTRACT, price=DROP), "price", "required"),
    ("side HOLD", body(CONTRACT, side="HOLD"), "side", "'BUY' or 'SELL'"),
    ("side number", body(CONTRACT, side=1), "side", ""),
    ("side null", body(CONTRACT, side=None), "side", ""),
    ("price 0", body(CONTRACT, price=0), "price", "greater than 0"),
    ("price -1", body(CONTRACT, price=-1), "price", "greater than 0"),
    ("price NaN string", body(CONTRACT, price="NaN"), "price", "finite"),
    ("price NaN literal", body(CONTRACT, price=DROP)[:-1] + b', "price": NaN}', "price", "finite"),
    ("price 1e999", body(CONTRACT, price=DROP)[:-1] + b', "price": 1e999}', "price", "finite"),
    ("price Infinity", body(CONTRACT, price="Infinity"), "price", "finite"),
    ("price bool", body(CONTRACT, price=True), "price", "decimal number"),
    ("price text", body(CONTRACT, price="cheap"), "price", "decimal number"),
    ("price list", body(CONTRACT, price=[1]), "price", "decimal number"),
    ("price 1e18", body(CONTRACT, price="1e18"), "price", "below 1e18"),
    ("symbol lower-case", body(CONTRACT, symbol="btc_usdt"), "symbol", "upper-case"),
    ("symbol spaced", body(CONTRACT, symbol="BTC USDT"), "symbol", "upper-case"),
    ("symbol trailing space", body(CONTRACT, symbol="BTC_USDT "), "symbol", "upper-case"),
    ("symbol 200 chars", body(CONTRACT, symbol="B" * 200), "symbol", "at most 32"),
    ("symbol SQL", body(CONTRACT, symbol="BTC'; DROP TABLE order_intents;--"), "symbol", ""),
    ("symbol two separators", body(CONTRACT, symbol="BTC_USDT_X"), "symbol", "upper-case"),
    ("symbol number", body(CONTRACT, symbol=123), "symbol", "string"),
    ("strategy HTML", body(CONTRACT, strategy="<script>alert(1)</script>"), "strategy", "1-64"),
    ("strategy 65 chars", body(CONTRACT, strategy="s" * 65), "strategy", "1-64"),
    ("strategy empty", body(CONTRACT, strategy=""), "strategy", "1-64"),
    ("strategy SQL", body(CONTRACT, strategy="x' OR '1'='1"), "strategy", "1-64"),
    (
        "emitted_at a day ahead",
        body(CONTRACT, emitted_at=(NOW + timedelta(days=1)).isoformat()),
        "emitted_at",
        "5 minutes in the future",
    ),
    ("emitted_at naive", body(CONTRACT, emitted_at="2026-11-25T12:00:00"), "emitted_at", "timezone"),
    ("emitted_at text", body(CONTRACT, emitted_at="yesterday"), "emitted_at", ""),
    ("signal_id not uuid", body(CONTRACT, signal_id="not-a-uuid"), "signal_id", "UUID"),
    ("signal_id number", body(CONTRACT, signal_id=12345), "signal_id", "UUID"),
    ("signal_id SQL", body(CONTRACT, signal_id="1; DELETE FROM x"), "signal_id", "UUID"),
    ("unknown field", body(CONTRACT, pirce="1"), "pirce", "unknown field"),
    ("schema_version 2", body(CONTRACT, schema_version=2), "schema_version", ""),
    ("source strategy", body(CONTRACT, source="strategy"), "source", "source is webhook"),
    ("symbol and ticker", body(CONTRACT, ticker="BINANCE:BTCUSDT"), "ticker", "not both"),
    ("side and action", body(CONTRACT, action="buy"), "action", "not both"),
    ("both secrets", body(CONTRACT, passphrase=SECRET), "passphrase", "once"),
    ("ticker lower-case", body(TRADINGVIEW, ticker="binance:btcusdt"), "ticker", "upper-case"),
    ("ticker perpetual", body(TRADINGVIEW, ticker="BINANCE:BTCUSDT.P"), "ticker", "upper-case"),
    ("action hold", body(TRADINGVIEW, action="hold"), "action", "'BUY' or 'SELL'"),
    ("action missing", body(TRADINGVIEW, action=DROP), "side", "required"),
    ("close zero", body(TRADINGVIEW, close="0"), "close", "greater than 0"),
    ("close placeholder", body(TRADINGVIEW, close="{{close}}"), "close", "decimal number"),
]


@pytest.mark.parametrize(("raw", "field", "needle"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_bodies_are_rejected_naming_the_field(raw: bytes, field: str, needle: str) -> None:
    with pytest.raises(PayloadError) as err:
        parse_webhook_body(raw, now=NOW)
    assert err.value.status == 422
    named = [e for e in err.value.errors if e["field"] == field]
    assert named, f"no error names {field!r}: {err.value.errors}"
    assert any(needle in e["message"] for e in named), err.value.errors
    assert SECRET not in str(err.value)


def test_there_are_at_least_25_bad_bodies() -> None:
    assert len(BAD) >= 25


def test_several_problems_are_reported_together() -> None:
    raw = body(CONTRACT, symbol="btc", side="HOLD", price=-1, signal_id="x")
    with pytest.raises(PayloadError) as err:
        parse_webhook_body(raw, now=NOW)
    assert {e["field"] for e in err.value.errors} == {"symbol", "side", "price", "signal_id"}


def test_a_body_over_64_kib_is_too_large() -> None:
    raw = body(CONTRACT, strategy=DROP, comment="x" * MAX_BODY_BYTES)
    with pytest.raises(PayloadTooLarge) as err:
        parse_webhook_body(raw, now=NOW)
    assert err.value.status == 413 and "64 KiB" in err.value.errors[0]["message"]


def test_error_carries_the_secret_so_the_caller_can_check_it_first() -> None:
    with pytest.raises(PayloadError) as err:
        parse_webhook_body(body(TRADINGVIEW, close=-1), now=NOW)
    assert err.value.secret == SECRET


# --- the webhook's answer ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected", "status", "needle"),
    [
        (body(CONTRACT), SECRET, 202, ""),
        (body(TRADINGVIEW), SECRET, 202, ""),
        (body(CONTRACT), None, 401, "set WEBHOOK_SECRET"),
        (b"not json", None, 401, "set WEBHOOK_SECRET"),
        (body(CONTRACT, secret=DROP), SECRET, 401, "missing secret"),
        (body(CONTRACT, secret="wrong"), SECRET, 401, "wrong secret"),
        (body(TRADINGVIEW, passphrase="wrong"), SECRET, 401, "wrong passphrase"),
        (body(CONTRACT, secret=123), SECRET, 401, "secret must be a string"),
        (body(CONTRACT, passphrase=SECRET), SECRET, 401, "not both"),
        (body(CONTRACT, secret="wrong", price=-1), SECRET, 401, "wrong secret"),
        (body(CONTRACT, price=-1), SECRET, 422, "greater than 0"),
        (b"[1, 2]", SECRET, 422, "JSON object"),
        (body(CONTRACT, comment="x" * MAX_BODY_BYTES), SECRET, 413, "64 KiB"),
    ],
)
def test_judge_webhook_answers(raw: bytes, expected: str | None, status: int, needle: str) -> None:
    verdict = judge_webhook(raw, now=NOW, expected_secret=expected)
    assert verdict.status == status
    assert (verdict.signal is not None) is (status == 202)
    assert all(needle in e["message"] for e in verdict.errors[:1])
    assert all(SECRET not in e["message"] for e in verdict.errors)
