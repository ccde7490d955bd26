"""Every field rule of SignalEmitted rejects its bad values with a message naming the field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

from shared.events import DeadLetter, OrderDecided, SignalEmitted, field_errors

GOOD = {
    "signal_id": "6f1c2a52-8f0e-4c1a-9a57-1f0c6e2b7d11",
    "symbol": "BTC_USDT",
    "side": "BUY",
    "price": "43210.5",
    "strategy": "rsi_ema:default",
    "source": "strategy",
    "emitted_at": "2026-11-25T12:00:00Z",
    "schema_version": 1,
}


def _errors(**changes: object) -> list[dict[str, str]]:
    data = {**GOOD, **changes}
    data = {k: v for k, v in data.items() if v is not _MISSING}
    with pytest.raises(ValidationError) as info:
        SignalEmitted.model_validate(data)
    return field_errors(info.value)


_MISSING = object()


def test_the_contract_example_is_valid_and_round_trips_as_json() -> None:
    event = SignalEmitted.model_validate(GOOD)
    again = SignalEmitted.model_validate_json(event.to_json())
    assert again == event
    assert again.price == Decimal("43210.5")
    assert '"price":"43210.5"' in event.to_json()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("symbol", "btc_usdt"),
        ("symbol", "BTC USDT"),
        ("symbol", "BTC__USDT"),
        ("symbol", "BTC_USDT_X"),
        ("symbol", "_BTC"),
        ("symbol", "A" * 33),
        ("symbol", ""),
        ("symbol", 42),
        ("side", "HOLD"),
        ("side", "buy "),
        ("side", None),
        ("price", "0"),
        ("price", "-1"),
        ("price", "NaN"),
        ("price", "Infinity"),
        ("price", "1e999"),
        ("price", "abc"),
        ("price", True),
        ("price", None),
        ("price", "0.0000000000000000001"),
        ("strategy", ""),
        ("strategy", "x" * 65),
        ("strategy", "rsi ema"),
        ("strategy", "<script>"),
        ("source", "telepathy"),
        ("emitted_at", "2026-11-25T12:00:00"),
        ("emitted_at", (datetime.now(UTC) + timedelta(days=1)).isoformat()),
        ("emitted_at", "yesterday"),
        ("signal_id", "not-a-uuid"),
        ("signal_id", "1234"),
        ("schema_version", 2),
    ],
)
def test_each_bad_value_is_rejected_naming_its_field(field: str, value: object) -> None:
    errors = _errors(**{field: value})
    assert [e["field"] for e in errors] == [field], errors
    assert errors[0]["message"]


@pytest.mark.parametrize("field", ["symbol", "side", "price"])
def test_required_fields_are_named_when_missing(field: str) -> None:
    errors = _errors(**{field: _MISSING})
    assert [e["field"] for e in errors] == [field]


def test_unknown_fields_are_refused() -> None:
    errors = _errors(quantity="1")
    assert errors[0]["field"] == "quantity"


def test_an_emitted_at_four_minutes_ahead_is_accepted_and_kept_in_utc() -> None:
    ahead = datetime.now(UTC) + timedelta(minutes=4)
    event = SignalEmitted.model_validate({**GOOD, "emitted_at": ahead.isoformat()})
    assert event.emitted_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("symbol", ["BTC_USDT", "BTC/USDT", "BTC-USDT", "BTCUSDT", "1INCH_USDT"])
def test_symbol_forms_the_contract_allows(symbol: str) -> None:
    assert SignalEmitted.model_validate({**GOOD, "symbol": symbol}).symbol == symbol


def test_numbers_are_accepted_as_prices() -> None:
    assert SignalEmitted.model_validate({**GOOD, "price": 43210.5}).price == Decimal("43210.5")
    assert SignalEmitted.model_validate({**GOOD, "price": 7}).price == Decimal(7)


_PRICE_TEXTS = [
    "50000",
    "0.5",
    "43210.5",
    "007",
    "1." + "1" * 18,
    "9" * 18,
    "9" * 18 + ".5",
    "1",
    "0.000000000000000001",
    "0",
    "0.000",
    "00",
    "1" * 19,
    "1." + "1" * 19,
    "1e5",
    " 5",
    "5 ",
    "5.",
    ".5",
    "-1",
    "+1",
    "NaN",
    "inf",
    "",
    "٣",
    "1_000",
    "0x10",
    "1,5",
]


@pytest.mark.parametrize(
    "text", _PRICE_TEXTS + [f"{n}.{f}" for n in (0, 1, 12, 10**17) for f in ("0", "05", "9" * 18)]
)
def test_a_price_taken_on_the_short_path_is_what_the_full_rules_make_of_it(text: str) -> None:
    # Plain digits skip the full checks; accepted or refused, the result must be theirs.
    from shared.events import _parse_any_price, _parse_price

    def outcome(parse: object) -> object:
        try:
            return parse(text)  # type: ignore[operator]
        except ValueError as exc:
            return str(exc)

    short, full = outcome(_parse_price), outcome(_parse_any_price)
    assert short == full and type(short) is type(full)
    if isinstance(full, Decimal):
        assert isinstance(short, Decimal) and short.as_tuple() == full.as_tuple()  # same digits, places


def test_an_emitted_at_beyond_five_minutes_ahead_is_refused() -> None:
    ahead = datetime.now(UTC) + timedelta(minutes=5, seconds=2)
    assert _errors(emitted_at=ahead.isoformat())[0]["field"] == "emitted_at"
    behind_utc = (datetime.now(UTC) + timedelta(minutes=4)).astimezone(timezone(timedelta(hours=-7)))
    assert (
        SignalEmitted.model_validate({**GOOD, "emitted_at": behind_utc.isoformat()}).emitted_at.tzinfo is UTC
    )


def test_events_are_frozen() -> None:
    event = SignalEmitted.model_validate(GOOD)
    with pytest.raises(ValidationError):
        event.symbol = "ETH_USDT"  # type: ignore[misc]


def test_order_decided_and_dead_letter_validate() -> None:
    decided = OrderDecided.model_validate(
        {
            "signal_id": str(uuid.uuid4()),
            "intent_id": str(uuid.uuid4()),
            "symbol": "BTC_USDT",
            "side": "SELL",
            "status": "ORDER_FAILED",
            "decision_type": "FAILED",
            "reason_code": "INSUFFICIENT_FUNDS",
            "reason_message": "no BTC",
        }
    )
    assert OrderDecided.model_validate_json(decided.to_json()) == decided
    with pytest.raises(ValidationError):
        OrderDecided.model_validate({**decided.model_dump(), "reason_code": "BECAUSE"})
    letter = DeadLetter(
        stream="signals", entry_id="1-0", group="orchestrator", error="bad", deliveries=1, fields={}
    )
    assert DeadLetter.model_validate_json(letter.to_json()) == letter
