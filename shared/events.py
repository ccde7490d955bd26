"""The wire contract: every event on a stream, validated once, shared by producer and consumer."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)

SCHEMA_VERSION = 1
SYMBOL_RE = re.compile(r"^[A-Z0-9]+(?:[_/-][A-Z0-9]+)?$")
STRATEGY_RE = re.compile(r"^[A-Za-z0-9:_.-]{1,64}$")
MAX_FUTURE = timedelta(minutes=5)
_MAX_FUTURE_S = MAX_FUTURE.total_seconds()
PRICE_LIMIT = Decimal("1e18")
PRICE_MAX_PLACES = 18


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class Source(StrEnum):
    STRATEGY = "strategy"
    WEBHOOK = "webhook"
    MANUAL = "manual"


class IntentStatus(StrEnum):
    PENDING = "PENDING"
    ORDER_PLACED = "ORDER_PLACED"
    ORDER_FAILED = "ORDER_FAILED"
    DEDUP_SKIPPED = "DEDUP_SKIPPED"
    BLOCKED_LIVE_TRADING = "BLOCKED_LIVE_TRADING"

    @property
    def terminal(self) -> bool:
        return self is not IntentStatus.PENDING


TERMINAL_STATUSES = tuple(s.value for s in IntentStatus if s.terminal)


class DecisionType(StrEnum):
    EXECUTED = "EXECUTED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class ReasonCode(StrEnum):
    ORDER_PLACED = "ORDER_PLACED"
    DUPLICATE_SIGNAL = "DUPLICATE_SIGNAL"
    ORDER_BLOCKED_LIVE_TRADING = "ORDER_BLOCKED_LIVE_TRADING"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    INVALID_ORDER = "INVALID_ORDER"
    EXCHANGE_UNAVAILABLE = "EXCHANGE_UNAVAILABLE"
    RATE_LIMITED = "RATE_LIMITED"
    TIMEOUT = "TIMEOUT"
    UNKNOWN = "UNKNOWN"


class FailureClass(StrEnum):
    """Why an order failed; each is also the intent's reason_code."""

    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    INVALID_ORDER = "INVALID_ORDER"
    EXCHANGE_UNAVAILABLE = "EXCHANGE_UNAVAILABLE"
    RATE_LIMITED = "RATE_LIMITED"
    TIMEOUT = "TIMEOUT"
    UNKNOWN = "UNKNOWN"


# A price as senders write it (digits, at most one point; within the limits by its length): it
# needs no more checks than being above zero. Anything else takes the full path below.
_PLAIN_PRICE = re.compile(r"[0-9]{1,18}(?:\.[0-9]{1,18})?")  # 18: PRICE_LIMIT's digits, PRICE_MAX_PLACES


def _parse_price(value: Any) -> Decimal:
    if type(value) is str and _PLAIN_PRICE.fullmatch(value):
        price = Decimal(value)
        if price:
            return price
    return _parse_any_price(value)


def _parse_any_price(value: Any) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise ValueError("price must be a decimal number such as 43210.5")
    if isinstance(value, float):
        value = repr(value)
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, (str, Decimal)):
        raise ValueError("price must be a decimal number such as 43210.5")
    try:
        price = Decimal(value.strip()) if isinstance(value, str) else value
    except InvalidOperation:
        raise ValueError(f"price must be a decimal number such as 43210.5, not {value!r:.40}") from None
    if not price.is_finite():
        raise ValueError("price must be finite (not NaN or infinity)")
    if price <= 0:
        raise ValueError("price must be greater than 0")
    if price >= PRICE_LIMIT:
        raise ValueError("price must be below 1e18")
    exponent = price.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > PRICE_MAX_PLACES:
        raise ValueError(f"price may have at most {PRICE_MAX_PLACES} decimal places")
    return price


Price = Annotated[
    Decimal,
    BeforeValidator(_parse_price),
    PlainSerializer(lambda d: format(d.normalize(), "f"), return_type=str),
]


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    def to_json(self) -> str:
        """Serialise for a stream entry."""
        return self.model_dump_json()


class SignalEmitted(_Event):
    """A BUY or SELL signal for one symbol at one price, from one strategy."""

    signal_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    symbol: str = Field(max_length=32)
    side: Side
    price: Price
    strategy: str = "manual"
    source: Source = Source.MANUAL
    emitted_at: AwareDatetime = Field(default_factory=utcnow)
    schema_version: Literal[1] = 1

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, value: str) -> str:
        if not SYMBOL_RE.fullmatch(value):
            raise ValueError(
                "symbol must be upper-case letters and digits with at most one _, / or - "
                f"between base and quote (e.g. BTC_USDT), not {value!r:.40}"
            )
        return value

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        if not STRATEGY_RE.fullmatch(value):
            raise ValueError("strategy must be 1-64 characters of A-Za-z0-9:_.-")
        return value

    @field_validator("emitted_at")
    @classmethod
    def _not_future(cls, value: datetime) -> datetime:
        # In POSIX seconds: half the cost of subtracting datetimes, once per signal consumed.
        if value.timestamp() - time.time() > _MAX_FUTURE_S:
            raise ValueError("emitted_at must not be more than 5 minutes in the future")
        return value.astimezone(UTC)


class OrderDecided(_Event):
    """The terminal decision taken for one signal's order intent."""

    signal_id: uuid.UUID
    intent_id: uuid.UUID
    symbol: str
    side: Side
    status: IntentStatus
    decision_type: DecisionType
    reason_code: ReasonCode
    reason_message: str
    exchange_order_id: str | None = None
    decided_at: AwareDatetime = Field(default_factory=utcnow)
    schema_version: Literal[1] = 1


class DeadLetter(_Event):
    """An entry that could not be processed: where it came from and why."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    stream: str
    entry_id: str
    group: str
    error: str
    deliveries: int
    fields: dict[str, str]
    signal_id: str | None = None
    dead_at: AwareDatetime = Field(default_factory=utcnow)
    schema_version: Literal[1] = 1


class NoticeKind(StrEnum):
    """What an operator notice announces."""

    INVARIANT_VIOLATION = "INVARIANT_VIOLATION"
    RESOLVED = "RESOLVED"
    BRAKE_ON = "BRAKE_ON"
    BRAKE_OFF = "BRAKE_OFF"
    REPLY = "REPLY"


class OperatorNotice(_Event):
    """Something the operator is told on Telegram: an alert, its resolution, a brake switch, a reply.

    Alerts carry the violation counts and up to ten signal ids; brake switches who and why;
    a reply its chat and its text. The notifier sends each notice_id once.
    """

    notice_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    kind: NoticeKind
    counts: dict[str, int] = Field(default_factory=dict)
    signal_ids: list[str] = Field(default_factory=list, max_length=10)
    hours: int | None = None
    actor: str | None = Field(default=None, max_length=128)
    reason: str | None = Field(default=None, max_length=500)
    text: str | None = Field(default=None, max_length=4096)
    chat_id: str | None = Field(default=None, max_length=64)
    at: AwareDatetime = Field(default_factory=utcnow)
    schema_version: Literal[1] = 1


def field_errors(exc: Exception) -> list[dict[str, str]]:
    """Turn a pydantic ValidationError into [{field, message}] a person can read."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return [{"field": "", "message": str(exc)}]
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        out.append({"field": loc, "message": msg})
    return out


def describe_errors(exc: Exception) -> str:
    """One line per field error: `field: message`."""
    return "; ".join(f"{e['field']}: {e['message']}" for e in field_errors(exc))
