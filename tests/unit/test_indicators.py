"""Indicators against an independent reference implementation and Wilder's published example."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.signal_monitor import indicators as ind
from services.signal_monitor.feeds import read_candles_csv

SAMPLE = Path(__file__).parents[2] / "services/signal_monitor/data/sample_candles.csv"


def sample_closes(symbol: str = "BTC_USDT") -> list[float]:
    return [float(c.close) for c in read_candles_csv(SAMPLE)[symbol]]


def reference_ema(xs: list[float], n: int) -> list[float | None]:
    """Textbook EMA: seed = mean of the first n, then ema = x*k + prev*(1-k), k = 2/(n+1)."""
    k = 2 / (n + 1)
    out: list[float | None] = []
    prev = None
    for i, x in enumerate(xs):
        if i < n - 1:
            out.append(None)
        elif i == n - 1:
            prev = math.fsum(xs[:n]) / n
            out.append(prev)
        else:
            assert prev is not None
            prev = x * k + prev * (1 - k)
            out.append(prev)
    return out


def reference_rsi(xs: list[float], n: int) -> list[float | None]:
    """Wilder's RSI, spelled out: gains/losses lists, simple first average, then smoothed."""
    deltas = [xs[i] - xs[i - 1] for i in range(1, len(xs))]
    gains = [d if d > 0 else 0.0 for d in deltas]
    losses = [-d if d < 0 else 0.0 for d in deltas]
    out: list[float | None] = [None] * len(xs)
    if len(deltas) < n:
        return out
    avg_gain = math.fsum(gains[:n]) / n
    avg_loss = math.fsum(losses[:n]) / n
    for j in range(n - 1, len(deltas)):
        if j >= n:
            avg_gain = ((n - 1) * avg_gain + gains[j]) / n
            avg_loss = ((n - 1) * avg_loss + losses[j]) / n
        flat = 100.0 if avg_gain > 0 else 50.0
        # 100 * G / (G + L) is 100 - 100 / (1 + G/L) rearranged: a different formula on purpose.
        out[j + 1] = flat if avg_loss == 0 else 100 * avg_gain / (avg_gain + avg_loss)
    return out


def assert_series_close(got: list[float | None], want: list[float | None]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if w is None:
            assert g is None, f"index {i}: expected warm-up None, got {g}"
        else:
            assert g == pytest.approx(w, rel=1e-9, abs=1e-9), f"index {i}"


@pytest.mark.parametrize("symbol", ["BTC_USDT", "ETH_USDT"])
@pytest.mark.parametrize("period", [5, 9, 13, 21, 50])
def test_ema_matches_reference_on_sample(symbol: str, period: int) -> None:
    closes = sample_closes(symbol)
    assert_series_close(ind.ema(closes, period), reference_ema(closes, period))


@pytest.mark.parametrize("symbol", ["BTC_USDT", "ETH_USDT"])
@pytest.mark.parametrize("period", [2, 7, 14, 30])
def test_rsi_matches_reference_on_sample(symbol: str, period: int) -> None:
    closes = sample_closes(symbol)
    assert_series_close(ind.rsi(closes, period), reference_rsi(closes, period))


def test_rsi_matches_wilders_published_example() -> None:
    # StockCharts' RSI worksheet (Wilder's method, 14 periods). Their table rounds the first
    # averages, so early values differ by < 0.1 and the gap shrinks as smoothing goes on.
    closes = [
        44.34, 44.09, 44.15, 43.61, 44.33, 44.83, 45.10, 45.42, 45.84, 46.08, 45.89,
        46.03, 45.61, 46.28, 46.28, 46.00, 46.03, 46.41, 46.22, 45.64, 46.21, 46.25,
        45.71, 46.45, 45.78, 45.35, 44.03, 44.18, 44.22, 44.57, 43.42, 42.66, 43.13,
    ]  # fmt: skip
    published = [
        70.53, 66.32, 66.55, 69.41, 66.36, 57.97, 62.93, 63.26, 56.06, 62.38,
        54.71, 50.42, 39.99, 41.46, 41.87, 45.46, 37.30, 33.09, 37.79,
    ]  # fmt: skip
    got = ind.rsi(closes, 14)
    assert got[:14] == [None] * 14
    for value, want in zip(got[14:], published, strict=True):
        assert value == pytest.approx(want, abs=0.1)
    assert got[-1] == pytest.approx(37.79, abs=0.01)


def test_rsi_of_flat_series_is_neutral_and_of_rising_series_is_100() -> None:
    assert ind.rsi([10.0] * 20, 14)[-1] == 50.0
    assert ind.rsi([float(i) for i in range(1, 21)], 14)[-1] == 100.0
    assert ind.rsi([float(20 - i) for i in range(20)], 14)[-1] == 0.0


def test_short_series_are_all_warm_up() -> None:
    assert ind.ema([1.0, 2.0], 3) == [None, None]
    assert ind.ema([1.0, 2.0, 3.0], 3) == [None, None, 2.0]
    assert ind.rsi([1.0] * 14, 14) == [None] * 14
    assert ind.rsi([], 14) == []


@pytest.mark.parametrize("period", [0, -1, 1.5, True])
def test_bad_period_is_refused(period: object) -> None:
    with pytest.raises(ValueError, match="period"):
        ind.ema([1.0, 2.0], period)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="period"):
        ind.rsi([1.0, 2.0], period)  # type: ignore[arg-type]


@given(st.lists(st.floats(min_value=1, max_value=1e6), min_size=16, max_size=80))
def test_rsi_stays_between_0_and_100(closes: list[float]) -> None:
    values = [v for v in ind.rsi(closes, 14) if v is not None]
    assert values and all(0.0 <= v <= 100.0 for v in values)


@given(st.lists(st.floats(min_value=1, max_value=1e6), min_size=3, max_size=80))
def test_ema_stays_within_the_range_of_its_inputs(closes: list[float]) -> None:
    values = [v for v in ind.ema(closes, 3) if v is not None]
    assert all(min(closes) - 1e-6 <= v <= max(closes) + 1e-6 for v in values)


def test_crossed_above_and_below_against_a_level() -> None:
    series = [25.0, 30.0, 35.0, 72.0, 68.0, None, 20.0]
    assert not ind.crossed_above(series, 30.0, 1)  # touching the level is not crossing
    assert ind.crossed_above(series, 30.0, 2)  # from <= 30 to > 30
    assert not ind.crossed_above(series, 30.0, 3)
    assert ind.crossed_below(series, 70.0, 4)
    assert not ind.crossed_below(series, 70.0, 3)
    assert not ind.crossed_below(series, 30.0, 5)  # warm-up gaps never cross
    assert not ind.crossed_below(series, 30.0, 6)
    assert not ind.crossed_above(series, 30.0, 0)
    assert not ind.crossed_above(series, 30.0, 99)


def test_crossed_above_and_below_against_a_series() -> None:
    fast: list[float | None] = [None, 1.0, 2.0, 3.0, 2.0, 2.0]
    slow: list[float | None] = [None, 2.0, 2.0, 2.5, 2.5, 1.0]
    assert not ind.crossed_above(fast, slow, 1)
    assert not ind.crossed_above(fast, slow, 2)  # equal is not above
    assert ind.crossed_above(fast, slow, 3)
    assert ind.crossed_below(fast, slow, 4)
    assert ind.crossed_above(fast, slow, 5)
    assert [i for i in range(6) if ind.crossed_below(fast, slow, i)] == [4]
