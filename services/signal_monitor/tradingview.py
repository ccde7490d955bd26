"""Turn a webhook body into a validated SignalEmitted: the contract's shape or TradingView's.

Accepted fields (§8): the contract's `signal_id`, `symbol`, `side`, `price`, `strategy`,
`emitted_at`, `schema_version` (and `source`, which may only say "webhook"); or the
TradingView alert shape, where `ticker`, `action` and `close` stand for symbol, side and
price. The secret comes as `secret` or `passphrase`. Either shape may carry `signal_id`.

Normalisation, so both shapes name a market the same way:
- `side`/`action` in any case (buy, Buy, BUY);
- `ticker`: the exchange prefix is dropped (BINANCE:BTCUSDT -> BTCUSDT) and a ticker without
  a separator that ends in a common quote asset gets one (BTCUSDT -> BTC_USDT);
- a missing `strategy` is "tradingview" for the TradingView shape, "webhook" otherwise;
- a missing `emitted_at` is `now`; a missing `signal_id` is a new UUID.
TradingView placeholders that carry no signal meaning (IGNORED_FIELDS) are ignored;
any other unknown field is an error, so a typo never passes silently.
"""

from __future__ import annotations

import hmac
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from shared.events import MAX_FUTURE, SignalEmitted, Source, field_errors

MAX_BODY_BYTES = 64 * 1024
SECRET_FIELDS = ("secret", "passphrase")
CONTRACT_FIELDS = frozenset(
    {"signal_id", "symbol", "side", "price", "strategy", "source", "emitted_at", "schema_version"}
)
TRADINGVIEW_ALIASES = {"ticker": "symbol", "action": "side", "close": "price"}
IGNORED_FIELDS = frozenset(
    {"time", "timenow", "exchange", "interval", "open", "high", "low", "volume", "comment"}
)
# Tried in this order: the longer stablecoins before USD so BTCUSDT is BTC_USDT and
# BTCFDUSD is BTC_FDUSD; TUSD is left out because it would split XBTUSD as XB_TUSD.
QUOTE_ASSETS = ("USDT", "USDC", "FDUSD", "BUSD", "USD", "EUR", "GBP", "BTC", "ETH", "BNB", "DAI")

FieldError = dict[str, str]


class PayloadError(ValueError):
    """A body that cannot become a signal; `errors` lists {field, message} for the caller."""

    status = 422

    def __init__(self, errors: list[FieldError], *, secret: str | None = None) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors
        self.secret = secret


class PayloadTooLarge(PayloadError):
    """The body is larger than MAX_BODY_BYTES."""

    status = 413


@dataclass(frozen=True)
class WebhookPayload:
    """A valid webhook body: the secret it carried and the signal it asks for."""

    secret: str | None
    signal: SignalEmitted
    shape: Literal["contract", "tradingview"]


@dataclass(frozen=True)
class WebhookVerdict:
    """What the webhook answers: 202 with a signal, or 401/413/422 with errors."""

    status: int
    signal: SignalEmitted | None = None
    errors: list[FieldError] = field(default_factory=list)


def secret_matches(given: str | None, expected: str | None) -> bool:
    """Compare secrets in constant time; an unset expected secret matches nothing."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def normalize_ticker(ticker: str) -> str:
    """Map a TradingView ticker to a contract symbol: drop `EXCHANGE:`, split a known quote."""
    symbol = ticker.rsplit(":", 1)[-1] if ticker.count(":") == 1 else ticker
    if any(sep in symbol for sep in "_/-"):
        return symbol
    for quote in QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[: -len(quote)]}_{quote}"
    return symbol


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PayloadError([{"field": key, "message": "appears more than once in the body"}])
        out[key] = value
    return out


def decode_body(raw: bytes) -> dict[str, Any]:
    """Decode the body into a JSON object, or raise PayloadError/PayloadTooLarge."""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(
            [{"field": "body", "message": f"body is {len(raw)} bytes; the limit is 64 KiB"}]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError([{"field": "body", "message": "body must be UTF-8 JSON"}]) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            [{"field": "body", "message": f"body is not valid JSON ({exc.msg} at char {exc.pos})"}]
        ) from None
    except RecursionError:
        raise PayloadError([{"field": "body", "message": "body is nested too deeply"}]) from None
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "null"
        raise PayloadError([{"field": "body", "message": f"body must be a JSON object, not a {kind}"}])
    return data


def extract_secret(data: dict[str, Any]) -> str | None:
    """Return the secret sent as `secret` or `passphrase` (None when absent or not a string)."""
    given = [data[name] for name in SECRET_FIELDS if name in data]
    if len(given) != 1 or not isinstance(given[0], str):
        return None
    return given[0]


def parse_webhook_body(raw: bytes, *, now: datetime) -> WebhookPayload:
    """Validate a webhook body into its secret and a SignalEmitted (source webhook)."""
    data = decode_body(raw)
    secret = extract_secret(data)
    fields, names, shape, errors = _map_fields(data)
    fields.setdefault("strategy", "tradingview" if shape == "tradingview" else "webhook")
    fields.setdefault("emitted_at", now)
    fields["source"] = Source.WEBHOOK
    try:
        signal = SignalEmitted.model_validate(fields)
    except ValidationError as exc:
        errors += [{**e, "field": names.get(e["field"].split(".")[0], e["field"])} for e in field_errors(exc)]
    else:
        if signal.emitted_at - now > MAX_FUTURE:
            errors.append({"field": "emitted_at", "message": "must not be more than 5 minutes in the future"})
    if errors:
        raise PayloadError(errors, secret=secret)
    return WebhookPayload(secret=secret, signal=signal, shape=shape)


def _map_fields(
    data: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, str], Literal["contract", "tradingview"], list[FieldError]]:
    errors: list[FieldError] = []
    fields: dict[str, Any] = {}
    names = {name: name for name in CONTRACT_FIELDS}
    shape: Literal["contract", "tradingview"] = "contract"
    for key, value in data.items():
        if key in SECRET_FIELDS or key in IGNORED_FIELDS:
            continue
        if key in TRADINGVIEW_ALIASES:
            target = TRADINGVIEW_ALIASES[key]
            shape = "tradingview"
            if target in data:
                errors.append({"field": key, "message": f"give either {target} or {key}, not both"})
                continue
            names[target] = key
            fields[target] = value
        elif key in CONTRACT_FIELDS:
            fields[key] = value
        else:
            errors.append({"field": key, "message": _unknown_field_message(key)})
    if all(name in data for name in SECRET_FIELDS):
        errors.append({"field": "passphrase", "message": "send the secret once, not also as secret"})
    if "source" in fields and fields.pop("source") != Source.WEBHOOK.value:
        errors.append({"field": "source", "message": "a webhook signal's source is webhook; omit it"})
    if isinstance(fields.get("side"), str):
        fields["side"] = fields["side"].upper()
    if names["symbol"] == "ticker" and isinstance(fields.get("symbol"), str):
        fields["symbol"] = normalize_ticker(fields["symbol"])
    if "signal_id" in fields and not _is_uuid(fields["signal_id"]):
        errors.append({"field": "signal_id", "message": "must be a UUID such as 6f1c2a9e-…"})
        fields.pop("signal_id")
    return fields, names, shape, errors


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _unknown_field_message(key: str) -> str:
    expected = "signal_id, symbol|ticker, side|action, price|close, strategy, emitted_at"
    return f"unknown field; expected {expected}, secret|passphrase"


def secret_problem(data: dict[str, Any], expected: str) -> str | None:
    """Say what is wrong with the body's secret, or None when it matches `expected`."""
    given = [name for name in SECRET_FIELDS if name in data]
    if not given:
        return "missing secret: send it as secret or passphrase"
    if len(given) > 1:
        return "send the secret once, as secret or passphrase, not both"
    value = data[given[0]]
    if not isinstance(value, str):
        return f"{given[0]} must be a string"
    if not secret_matches(value, expected):
        return f"wrong {given[0]}"
    return None


def judge_webhook(raw: bytes, *, now: datetime, expected_secret: str | None) -> WebhookVerdict:
    """Decide the webhook's answer to a body: size, then secret, then fields."""
    if not expected_secret:
        disabled = "the webhook is disabled: set WEBHOOK_SECRET on the signal monitor"
        return WebhookVerdict(401, errors=[{"field": "secret", "message": disabled}])
    try:
        data = decode_body(raw)
    except PayloadError as exc:
        return WebhookVerdict(exc.status, errors=exc.errors)
    problem = secret_problem(data, expected_secret)
    if problem is not None:
        return WebhookVerdict(401, errors=[{"field": "secret", "message": problem}])
    try:
        payload = parse_webhook_body(raw, now=now)
    except PayloadError as exc:
        return WebhookVerdict(exc.status, errors=exc.errors)
    return WebhookVerdict(202, signal=payload.signal)
