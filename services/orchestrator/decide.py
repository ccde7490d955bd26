"""Pure order rules: dedup within the window, the trading-mode gate, status to decision."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

import orjson

from shared.events import DecisionType, FailureClass, IntentStatus, ReasonCode, SignalEmitted
from shared.settings import TradingMode

INTENT_NAMESPACE = uuid.UUID("5b0f7a4e-3c1d-4e0a-9a57-1f0c6e2b7d11")

DedupKey = tuple[str, str, str]


def intent_id_for(signal_id: uuid.UUID) -> uuid.UUID:
    """Derive the intent id from the signal id, so every retry names the same intent.

    uuid5(INTENT_NAMESPACE, str(signal_id)).
    """
    return intent_ids_for([signal_id])[0]


def intent_ids_for(signal_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """intent_id_for of each signal id, as uuid.uuid5 computes it, minus its argument handling.

    The names (each id's canonical text) come from one orjson call for the batch: 36
    characters each, every 39 bytes of the JSON array (quotes and comma between); str() of
    each id cost as much as the hash.
    """
    names = orjson.dumps(list(signal_ids), default=str)
    ids: list[uuid.UUID] = []
    for start in range(2, 39 * len(signal_ids), 39):
        digest = hashlib.sha1(_NAMESPACE_BYTES + names[start : start + 36], usedforsecurity=False).digest()
        ids.append(uuid.UUID(int=(int.from_bytes(digest[:16]) & _UUID5_CLEAR) | _UUID5_SET))
    return ids


_NAMESPACE_BYTES = INTENT_NAMESPACE.bytes
# Version 5 in bits 76-79, the RFC 4122 variant (10) in bits 62-63.
_UUID5_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID5_SET = (0x5 << 76) | (0x2 << 62)


def dedup_key(signal: SignalEmitted) -> DedupKey:
    """The (symbol, side, strategy) a duplicate shares."""
    return (signal.symbol, signal.side.value, signal.strategy)


class Decision(NamedTuple):
    """A terminal status with its decision type, reason code and a sentence for people."""

    status: IntentStatus
    decision_type: DecisionType
    reason_code: ReasonCode
    reason_message: str


def placed(order_id: str, message: str = "") -> Decision:
    """The decision for an order the exchange accepted."""
    return Decision(
        IntentStatus.ORDER_PLACED,
        DecisionType.EXECUTED,
        ReasonCode.ORDER_PLACED,
        message or f"order placed ({order_id})",
    )


def failed(failure: FailureClass, message: str) -> Decision:
    """The decision for an order that failed, classed."""
    return Decision(IntentStatus.ORDER_FAILED, DecisionType.FAILED, ReasonCode(failure.value), message)


def duplicate(of_emitted_at: datetime, window_s: float) -> Decision:
    """The decision for a signal inside the dedup window of an earlier intent."""
    return Decision(
        IntentStatus.DEDUP_SKIPPED,
        DecisionType.SKIPPED,
        ReasonCode.DUPLICATE_SIGNAL,
        f"same symbol, side and strategy as an intent emitted at {of_emitted_at.isoformat()} "
        f"(within DEDUP_WINDOW_SECONDS={window_s:g})",
    )


def blocked(why: str) -> Decision:
    """The decision for an order held back by TRADING_MODE=off or the brake."""
    return Decision(
        IntentStatus.BLOCKED_LIVE_TRADING,
        DecisionType.SKIPPED,
        ReasonCode.ORDER_BLOCKED_LIVE_TRADING,
        why,
    )


class Plan(NamedTuple):
    """What to do with one new signal: a terminal decision now, or place an order (decision None)."""

    signal: SignalEmitted
    intent_id: uuid.UUID
    decision: Decision | None


def plan_signals(
    signals: Sequence[SignalEmitted],
    active: Iterable[tuple[DedupKey, datetime]],
    *,
    window_s: float,
    mode: TradingMode,
    brake_reason: str | None = None,
) -> list[Plan]:
    """Decide each new signal against the non-skipped intents already recorded (`active`).

    A signal is a duplicate when a non-skipped intent of its key was emitted less than
    the window apart from it, earlier or later: with several orchestrators the order of
    processing is not the order of emission, and this keeps non-skipped intents of one
    key at least a window apart whatever the order. Signals of one batch are taken in
    emission order, each seeing the ones before it.
    """
    window = timedelta(seconds=window_s)
    seen: dict[DedupKey, list[datetime]] = {}
    for key, emitted_at in active:
        seen.setdefault(key, []).append(emitted_at)
    plans: list[Plan] = []
    ordered = sorted(signals, key=lambda s: (s.emitted_at, s.signal_id))
    for signal, intent_id in zip(ordered, intent_ids_for([s.signal_id for s in ordered]), strict=True):
        key = dedup_key(signal)
        near = [t for t in seen.get(key, ()) if abs(signal.emitted_at - t) < window]
        decision: Decision | None
        if near:
            decision = duplicate(min(near, key=lambda t: abs(signal.emitted_at - t)), window_s)
        else:
            seen.setdefault(key, []).append(signal.emitted_at)
            if mode is TradingMode.OFF:
                decision = blocked("TRADING_MODE=off: orders are blocked")
            elif brake_reason is not None:
                decision = blocked(brake_reason)
            else:
                decision = None
        plans.append(Plan(signal, intent_id, decision))
    return plans
