"""Strategies: pure rules over a candle series that say BUY, SELL or nothing.

A strategy is named `KIND[:LABEL]` (the contract's `strategy` field, 1-64 characters of
A-Za-z0-9:_.-). KIND picks the rule; LABEL is free text naming the parameter set.

- `rsi`: BUY when RSI(period) crosses up through `oversold`; SELL when it crosses down
  through `overbought`.
- `ema_cross`: BUY when EMA(fast) crosses above EMA(slow); SELL when it crosses below.
- `rsi_ema`: the EMA cross, filtered by RSI: BUY on a bullish cross while RSI < `overbought`
  (the move is not already overextended), SELL on a bearish cross while RSI > `oversold`.

"Crosses up through x" at candle i means value[i-1] <= x < value[i]; "crosses down"
means value[i-1] >= x > value[i]. Indicators warm up over the whole series given, so
`evaluate` on a growing series agrees with `scan` on the full one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from services.signal_monitor import indicators as ind
from services.signal_monitor.feeds import Candle
from shared.events import STRATEGY_RE, Side


class StrategyError(ValueError):
    """A strategy name or parameter is invalid; the message says which and why."""


class StrategyKind(StrEnum):
    RSI = "rsi"
    EMA_CROSS = "ema_cross"
    RSI_EMA = "rsi_ema"


@dataclass(frozen=True)
class StrategyParams:
    """Every tunable of every kind; each kind reads the ones listed in PARAMS_BY_KIND."""

    period: int = 14
    oversold: float = 30.0
    overbought: float = 70.0
    fast: int = 9
    slow: int = 21


PARAMS_BY_KIND: dict[StrategyKind, frozenset[str]] = {
    StrategyKind.RSI: frozenset({"period", "oversold", "overbought"}),
    StrategyKind.EMA_CROSS: frozenset({"fast", "slow"}),
    StrategyKind.RSI_EMA: frozenset({"period", "oversold", "overbought", "fast", "slow"}),
}


@dataclass(frozen=True)
class StrategySpec:
    """A named strategy: its rule kind and parameters."""

    name: str
    kind: StrategyKind
    params: StrategyParams = field(default_factory=StrategyParams)

    @classmethod
    def parse(cls, name: str, params: Mapping[str, Any] | None = None) -> StrategySpec:
        """Build a spec from `KIND[:LABEL]` and parameter overrides, or raise StrategyError."""
        if not isinstance(name, str) or not STRATEGY_RE.fullmatch(name):
            raise StrategyError(
                f"strategy name {name!r:.70} must be 1-64 characters of A-Za-z0-9:_.- such as rsi_ema:default"
            )
        kind_text = name.split(":", 1)[0]
        try:
            kind = StrategyKind(kind_text)
        except ValueError:
            known = ", ".join(k.value for k in StrategyKind)
            raise StrategyError(
                f"strategy {name!r}: unknown kind {kind_text!r}; use one of {known}"
            ) from None
        return cls(name=name, kind=kind, params=_params(name, kind, params or {}))

    @property
    def warmup(self) -> int:
        """Return how many candles the rule needs before it can fire."""
        p = self.params
        if self.kind is StrategyKind.RSI:
            return p.period + 2
        if self.kind is StrategyKind.EMA_CROSS:
            return p.slow + 1
        return max(p.period + 2, p.slow + 1)


def _params(name: str, kind: StrategyKind, given: Mapping[str, Any]) -> StrategyParams:
    allowed = PARAMS_BY_KIND[kind]
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise StrategyError(
            f"strategy {name!r}: {kind.value} takes {', '.join(sorted(allowed))}; "
            f"unknown parameter(s): {', '.join(unknown)}"
        )
    types = {f.name: f.type for f in fields(StrategyParams)}
    clean: dict[str, Any] = {}
    for key, value in given.items():
        want_int = types[key] in ("int", int)
        ok_type = isinstance(value, int) if want_int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            kind_word = "a whole number" if want_int else "a number"
            raise StrategyError(f"strategy {name!r}: {key} must be {kind_word}, not {value!r:.40}")
        clean[key] = value if want_int else float(value)
    p = replace(StrategyParams(), **clean)
    if p.period < 1 or p.fast < 1 or p.slow < 1:
        raise StrategyError(f"strategy {name!r}: period, fast and slow must be >= 1")
    if "fast" in allowed and p.fast >= p.slow:
        raise StrategyError(f"strategy {name!r}: fast ({p.fast}) must be shorter than slow ({p.slow})")
    if "oversold" in allowed and not 0 < p.oversold < p.overbought < 100:
        raise StrategyError(
            f"strategy {name!r}: need 0 < oversold ({p.oversold}) < overbought ({p.overbought}) < 100"
        )
    return p


@dataclass(frozen=True)
class _Lines:
    rsi: list[float | None]
    fast: list[float | None]
    slow: list[float | None]


def _lines(spec: StrategySpec, closes: Sequence[float]) -> _Lines:
    p = spec.params
    empty: list[float | None] = [None] * len(closes)
    uses_rsi = spec.kind in (StrategyKind.RSI, StrategyKind.RSI_EMA)
    uses_ema = spec.kind in (StrategyKind.EMA_CROSS, StrategyKind.RSI_EMA)
    return _Lines(
        rsi=ind.rsi(closes, p.period) if uses_rsi else empty,
        fast=ind.ema(closes, p.fast) if uses_ema else empty,
        slow=ind.ema(closes, p.slow) if uses_ema else empty,
    )


def _side_at(spec: StrategySpec, lines: _Lines, i: int) -> Side | None:
    p = spec.params
    if spec.kind is StrategyKind.RSI:
        if ind.crossed_above(lines.rsi, p.oversold, i):
            return Side.BUY
        if ind.crossed_below(lines.rsi, p.overbought, i):
            return Side.SELL
        return None
    bullish = ind.crossed_above(lines.fast, lines.slow, i)
    bearish = ind.crossed_below(lines.fast, lines.slow, i)
    if spec.kind is StrategyKind.EMA_CROSS:
        return Side.BUY if bullish else Side.SELL if bearish else None
    level = lines.rsi[i]
    if level is None:
        return None
    if bullish and level < p.overbought:
        return Side.BUY
    if bearish and level > p.oversold:
        return Side.SELL
    return None


def _closes(candles: Sequence[Candle]) -> list[float]:
    return [float(c.close) for c in candles]


def evaluate(strategy: StrategySpec, candles: Sequence[Candle]) -> Side | None:
    """Return the side the strategy signals on the latest candle, or None."""
    if len(candles) < 2:
        return None
    lines = _lines(strategy, _closes(candles))
    return _side_at(strategy, lines, len(candles) - 1)


def scan(strategy: StrategySpec, candles: Sequence[Candle]) -> list[tuple[int, Side]]:
    """Return (index, side) for every candle of the series on which the strategy signals."""
    lines = _lines(strategy, _closes(candles))
    out: list[tuple[int, Side]] = []
    for i in range(1, len(candles)):
        side = _side_at(strategy, lines, i)
        if side is not None:
            out.append((i, side))
    return out


class StrategyRunner:
    """Keep a bounded window of one symbol's candles and evaluate a strategy on each new one.

    The window (default 1000 candles) bounds memory and work per candle; within it the
    result equals `evaluate` over the whole history as long as the history fits.
    """

    def __init__(self, strategy: StrategySpec, *, window: int = 1000) -> None:
        if window < strategy.warmup:
            raise StrategyError(
                f"window {window} is shorter than {strategy.name}'s warm-up {strategy.warmup}"
            )
        self.strategy = strategy
        self._candles: deque[Candle] = deque(maxlen=window)

    def push(self, candle: Candle) -> Side | None:
        """Add a closed candle (ignored unless newer than the last) and return the signal on it."""
        if self._candles and candle.ts <= self._candles[-1].ts:
            return None
        self._candles.append(candle)
        return evaluate(self.strategy, self._candles)
