"""Gates a signal passes before it counts as sent: kill switch, alerts, cooldown, price change.

`decide` is the pure rule. `ThrottleStore` keeps the per-key state in Redis so that it
survives a restart, and `pass_and_send` records a pass in the same atomic step as it sends
the signal (compare-and-set on the key's state), so two monitors racing on the same key
never both pass, and a pass is never recorded for a signal that was not sent.

The throttle key is (symbol, side, strategy); its state is the price and time of the last
signal that passed. A signal is held back while `now - last_time < cooldown_seconds`
(also when `now` is before `last_time`, e.g. a replay restarted from its beginning), or
while its price moved less than `min_price_change_pct` percent from the last price.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar

from shared.events import Side, SignalEmitted
from shared.publishing import ThrottleSwap

R = TypeVar("R")


class GateCode(StrEnum):
    PASSED = "PASSED"
    KILL_SWITCH = "KILL_SWITCH"
    ALERTS_DISABLED = "ALERTS_DISABLED"
    COOLDOWN = "COOLDOWN"
    PRICE_CHANGE = "PRICE_CHANGE"


@dataclass(frozen=True)
class Candidate:
    """A signal about to be sent: what the gates look at."""

    symbol: str
    side: Side
    strategy: str
    price: Decimal

    @classmethod
    def of(cls, signal: SignalEmitted) -> Candidate:
        """Return the candidate a validated signal (webhook, manual) stands for."""
        return cls(signal.symbol, signal.side, signal.strategy, signal.price)

    @property
    def key(self) -> str:
        """Return the throttle key `SYMBOL|SIDE|STRATEGY` (none of them may contain `|`)."""
        return f"{self.symbol}|{self.side.value}|{self.strategy}"


@dataclass(frozen=True)
class GateRules:
    """The gates that apply to one candidate (kill switch, its symbol's alerts, its throttle)."""

    kill_switch: bool = False
    alert_enabled: bool = True
    cooldown_seconds: float = 0.0
    min_price_change_pct: Decimal = Decimal(0)


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may be sent, with a machine code and a sentence saying why."""

    allowed: bool
    code: GateCode
    reason: str


@dataclass(frozen=True)
class ThrottleState:
    """The last signal that passed for one throttle key."""

    last_price: Decimal
    last_time: datetime

    def to_json(self) -> str:
        """Serialise for storage."""
        return json.dumps({"price": str(self.last_price), "at": self.last_time.isoformat()})

    @classmethod
    def from_json(cls, raw: str | bytes) -> ThrottleState:
        """Parse what to_json wrote, or raise ValueError saying what is wrong with it."""
        try:
            data = json.loads(raw)
            at = datetime.fromisoformat(data["at"])
            price = Decimal(data["price"])
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            raise ValueError(f"unreadable throttle state {raw!r:.80}: {exc!r}") from None
        if at.tzinfo is None:
            raise ValueError(f"throttle state time {data['at']!r} has no timezone")
        return cls(last_price=price, last_time=at)


def decide(
    state: ThrottleState | None, candidate: Candidate, rules: GateRules, now: datetime
) -> GateDecision:
    """Decide whether `candidate` passes the gates at time `now` given its key's last state."""
    if rules.kill_switch:
        return GateDecision(False, GateCode.KILL_SWITCH, "the kill switch is on: nothing is sent")
    if not rules.alert_enabled:
        return GateDecision(False, GateCode.ALERTS_DISABLED, f"alerts are disabled for {candidate.symbol}")
    if state is not None:
        elapsed = (now - state.last_time).total_seconds()
        if rules.cooldown_seconds > 0 and elapsed < rules.cooldown_seconds:
            return GateDecision(
                False,
                GateCode.COOLDOWN,
                f"cooldown: {elapsed:.0f}s since the last {candidate.side.value} of "
                f"{candidate.symbol} by {candidate.strategy}, need {rules.cooldown_seconds:g}s",
            )
        change = abs(candidate.price - state.last_price) / state.last_price * 100
        if change < rules.min_price_change_pct:
            return GateDecision(
                False,
                GateCode.PRICE_CHANGE,
                f"price moved {change:.4f}% since the last signal ({state.last_price}), "
                f"need {rules.min_price_change_pct}%",
            )
    return GateDecision(True, GateCode.PASSED, "passed all gates")


def next_state(candidate: Candidate, now: datetime) -> ThrottleState:
    """Return the state to record once `candidate` has passed at `now`."""
    return ThrottleState(last_price=candidate.price, last_time=now)


class MemoryThrottleStore:
    """Throttle state in a dict, passes recorded as decided: what a replay would let through
    (tests predict the sample's signals with it); the service uses ThrottleStore."""

    def __init__(self) -> None:
        self.states: dict[str, ThrottleState] = {}

    async def get(self, key: str) -> ThrottleState | None:
        """Return the state of `key`, or None."""
        return self.states.get(key)

    async def put(self, key: str, state: ThrottleState) -> None:
        """Record the state of `key`."""
        self.states[key] = state

    async def try_pass(self, candidate: Candidate, rules: GateRules, now: datetime) -> GateDecision:
        """Decide and, when allowed, record the new state."""
        decision = decide(self.states.get(candidate.key), candidate, rules, now)
        if decision.allowed:
            self.states[candidate.key] = next_state(candidate, now)
        return decision


class ThrottleStore:
    """Throttle state in Redis under `{prefix}throttle:{key}`; survives restarts, shared by replicas."""

    def __init__(self, redis: Any, prefix: str = "") -> None:
        self._redis = redis
        self._prefix = f"{prefix}throttle:"

    def redis_key(self, key: str) -> str:
        """Return the Redis key holding the state of throttle key `key`."""
        return self._prefix + key

    async def get(self, key: str) -> ThrottleState | None:
        """Return the state of `key`, or None."""
        raw = await self._redis.get(self.redis_key(key))
        return None if raw is None else ThrottleState.from_json(raw)

    async def put(self, key: str, state: ThrottleState) -> None:
        """Record the state of `key`."""
        await self._redis.set(self.redis_key(key), state.to_json())

    async def pass_and_send(
        self,
        candidate: Candidate,
        rules: GateRules,
        now: datetime,
        send: Callable[[ThrottleSwap], Awaitable[R | None]],
    ) -> tuple[GateDecision, R | None]:
        """Decide; when allowed, send the signal and record the pass in one atomic step.

        `send(swap)` must send the signal and move swap.key from swap.expected to swap.new
        atomically, only while the key still holds swap.expected, and answer None, having done
        nothing, when it does not (shared.publishing.publish_signal). Another monitor
        passed a signal for this key meanwhile: the candidate is decided again on what it
        recorded. So a pass is recorded only with the signal it let through: a send Redis
        refuses records nothing, and the same signal passes when it is tried again.
        Returns the decision and what `send` answered (None when held).
        """
        if rules.kill_switch or not rules.alert_enabled:
            return decide(None, candidate, rules, now), None
        key = self.redis_key(candidate.key)
        while True:
            raw = await self._redis.get(key)
            state = None if raw is None else ThrottleState.from_json(raw)
            decision = decide(state, candidate, rules, now)
            if not decision.allowed:
                return decision, None
            sent = await send(ThrottleSwap(key, raw, next_state(candidate, now).to_json()))
            if sent is not None:
                return decision, sent
