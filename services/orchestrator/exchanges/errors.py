"""What a ccxt exception means for an order: its failure class, its message, and whether the order may exist."""

from __future__ import annotations

import re

from ccxt.base import errors as ccxt_errors

from shared.events import FailureClass

# Most specific first: RateLimitExceeded and DDoSProtection are NetworkErrors, OnMaintenance is an
# ExchangeNotAvailable, BadSymbol is a BadRequest, OrderNotFound is an InvalidOrder.
_CLASSES: tuple[tuple[type[BaseException], FailureClass, str], ...] = (
    (ccxt_errors.InsufficientFunds, FailureClass.INSUFFICIENT_FUNDS, "insufficient funds"),
    (ccxt_errors.RateLimitExceeded, FailureClass.RATE_LIMITED, "rate limited by the exchange"),
    (ccxt_errors.DDoSProtection, FailureClass.RATE_LIMITED, "rate limited by the exchange"),
    (ccxt_errors.OnMaintenance, FailureClass.EXCHANGE_UNAVAILABLE, "exchange under maintenance"),
    (ccxt_errors.ExchangeNotAvailable, FailureClass.EXCHANGE_UNAVAILABLE, "exchange unavailable"),
    (ccxt_errors.RequestTimeout, FailureClass.TIMEOUT, "exchange did not answer in time"),
    (ccxt_errors.BadSymbol, FailureClass.INVALID_ORDER, "symbol refused by the exchange"),
    (ccxt_errors.InvalidOrder, FailureClass.INVALID_ORDER, "order refused by the exchange"),
    (ccxt_errors.MarketClosed, FailureClass.INVALID_ORDER, "market closed"),
    (
        ccxt_errors.PermissionDenied,
        FailureClass.UNKNOWN,
        "the API key may not trade this (check its permissions and IP allow-list)",
    ),
    (
        ccxt_errors.AuthenticationError,
        FailureClass.UNKNOWN,
        "the exchange refused the credentials (check EXCHANGE_API_KEY and EXCHANGE_SECRET)",
    ),
    (ccxt_errors.BadRequest, FailureClass.INVALID_ORDER, "request refused by the exchange"),
    (
        ccxt_errors.InvalidNonce,
        FailureClass.UNKNOWN,
        "the exchange refused the request time (check the system clock)",
    ),
    (ccxt_errors.NetworkError, FailureClass.UNKNOWN, "network error talking to the exchange"),
)

_QUERY_RE = re.compile(r"\?\S*")

# These NetworkErrors are answers the exchange gave before acting: the order was not taken.
_DEFINITE_REFUSALS = (
    ccxt_errors.DDoSProtection,
    ccxt_errors.RateLimitExceeded,
    ccxt_errors.OnMaintenance,
    ccxt_errors.InvalidNonce,
)


def classify(exc: BaseException) -> tuple[FailureClass, str]:
    """Map a ccxt exception to its failure class and a message that says what happened."""
    # Query strings carry timestamps and signatures: noise in a message a user reads.
    detail = _QUERY_RE.sub("", str(exc)).strip()
    for cls, failure, summary in _CLASSES:
        if isinstance(exc, cls):
            return failure, _message(summary, exc, detail)
    return FailureClass.UNKNOWN, _message("exchange error", exc, detail)


def outcome_unknown(exc: BaseException) -> bool:
    """Tell whether the order may have reached the exchange despite exc (so look it up before failing)."""
    if isinstance(exc, _DEFINITE_REFUSALS):
        return False
    return isinstance(exc, ccxt_errors.OperationFailed)


def retry_when_absent(exc: BaseException) -> bool:
    """Tell whether an order lost to exc may be sent again once the exchange says it does not have it."""
    return isinstance(exc, ccxt_errors.RequestTimeout)


def is_duplicate(exc: BaseException) -> bool:
    """Tell whether the exchange refused the order because its client order id is already in use."""
    if isinstance(exc, ccxt_errors.DuplicateOrderId):
        return True
    return isinstance(exc, ccxt_errors.InvalidOrder) and "duplicate order" in str(exc).lower()


def _message(summary: str, exc: BaseException, detail: str) -> str:
    text = f"{summary} ({type(exc).__name__}"
    text += f": {detail[:300]})" if detail else ")"
    return text
