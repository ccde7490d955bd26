"""Technical indicators as pure functions over a price series.

Inputs are plain floats (`Sequence[float]`): indicators are statistics and float precision
is ample for them; prices that go on the wire stay `Decimal` elsewhere. Each function
returns a list as long as its input, with `None` where the indicator is still warming up.
"""

from __future__ import annotations

from collections.abc import Sequence

Series = Sequence[float | None]


def _check_period(period: int) -> None:
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"period must be a whole number >= 1, not {period!r}")


def ema(values: Sequence[float], period: int) -> list[float | None]:
    """Return the EMA, seeded with the simple average of the first `period` values."""
    _check_period(period)
    out: list[float | None] = [None] * len(values)
    if len(values) < period:
        return out
    alpha = 2.0 / (period + 1)
    current = sum(values[:period]) / period
    out[period - 1] = current
    for i in range(period, len(values)):
        current += alpha * (values[i] - current)
        out[i] = current
    return out


def _rsi_value(avg_gain: float, avg_loss: float) -> float:
    if avg_loss == 0:
        # No losses: fully overbought, unless nothing moved at all (then neutral).
        return 100.0 if avg_gain > 0 else 50.0
    return 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)


def rsi(values: Sequence[float], period: int = 14) -> list[float | None]:
    """Return Wilder's relative strength index (0-100); the first value is at index `period`."""
    _check_period(period)
    out: list[float | None] = [None] * len(values)
    if len(values) <= period:
        return out
    gains = losses = 0.0
    for i in range(1, period + 1):
        change = values[i] - values[i - 1]
        gains += max(change, 0.0)
        losses += max(-change, 0.0)
    avg_gain, avg_loss = gains / period, losses / period
    out[period] = _rsi_value(avg_gain, avg_loss)
    for i in range(period + 1, len(values)):
        change = values[i] - values[i - 1]
        avg_gain = (avg_gain * (period - 1) + max(change, 0.0)) / period
        avg_loss = (avg_loss * (period - 1) + max(-change, 0.0)) / period
        out[i] = _rsi_value(avg_gain, avg_loss)
    return out


def _at(series: Series | float, i: int) -> float | None:
    if isinstance(series, (int, float)):
        return float(series)
    return series[i]


def crossed_above(a: Series, b: Series | float, i: int) -> bool:
    """Tell whether `a` went from <= `b` at i-1 to > `b` at i (`b`: a series or a level)."""
    if i < 1 or i >= len(a):
        return False
    a0, a1, b0, b1 = a[i - 1], a[i], _at(b, i - 1), _at(b, i)
    if a0 is None or a1 is None or b0 is None or b1 is None:
        return False
    return a0 <= b0 and a1 > b1


def crossed_below(a: Series, b: Series | float, i: int) -> bool:
    """Tell whether `a` went from >= `b` at i-1 to < `b` at i (`b`: a series or a level)."""
    if i < 1 or i >= len(a):
        return False
    a0, a1, b0, b1 = a[i - 1], a[i], _at(b, i - 1), _at(b, i)
    if a0 is None or a1 is None or b0 is None or b1 is None:
        return False
    return a0 >= b0 and a1 < b1
