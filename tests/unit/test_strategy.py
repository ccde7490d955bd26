"""Strategy rules, and a replay of the shipped sample checked against an independent prediction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from services.signal_monitor.feeds import Candle, ReplayFeed
from services.signal_monitor.strategy import (
    StrategyError,
    StrategyKind,
    StrategyParams,
    StrategyRunner,
    StrategySpec,
    evaluate,
    scan,
)
from services.signal_monitor.throttle import Candidate, MemoryThrottleStore
from services.signal_monitor.watchlist import load_watchlist
from shared.events import Side
from tests.unit.test_indicators import reference_ema, reference_rsi

DATA = Path(__file__).parents[2] / "services/signal_monitor/data"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def candles_from(closes: list[float]) -> list[Candle]:
    out = []
    for i, c in enumerate(closes):
        price = Decimal(str(c))
        out.append(Candle(T0 + timedelta(minutes=i), price, price, price, price, Decimal(1)))
    return out


# --- naming and parameters -------------------------------------------------------------


def test_parse_reads_kind_label_and_default_params() -> None:
    spec = StrategySpec.parse("rsi_ema:default")
    assert spec.kind is StrategyKind.RSI_EMA
    assert spec.params == StrategyParams()
    assert StrategySpec.parse("rsi").kind is StrategyKind.RSI
    tuned = StrategySpec.parse("ema_cross:fast", {"fast": 5, "slow": 13})
    assert (tuned.params.fast, tuned.params.slow) == (5, 13)


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("", None, "1-64 characters"),
        ("rsi ema", None, "1-64 characters"),
        ("x" * 65, None, "1-64 characters"),
        ("macd:default", None, "unknown kind 'macd'"),
        ("rsi", {"fast": 3}, "unknown parameter(s): fast"),
        ("ema_cross", {"fast": 21, "slow": 9}, "fast (21) must be shorter than slow (9)"),
        ("rsi", {"oversold": 70, "overbought": 30}, "0 < oversold"),
        ("rsi", {"period": "14"}, "period must be a whole number"),
        ("rsi", {"period": 2.5}, "period must be a whole number"),
        ("rsi", {"oversold": True}, "oversold must be a number"),
        ("rsi", {"period": 0}, ">= 1"),
    ],
)
def test_parse_rejects_bad_names_and_params(name: str, params: dict | None, needle: str) -> None:
    with pytest.raises(StrategyError) as err:
        StrategySpec.parse(name, params)
    assert needle in str(err.value)


# --- rules on hand-made series ----------------------------------------------------------


def test_rsi_buys_when_rsi_crosses_up_through_oversold_and_sells_down_through_overbought() -> None:
    spec = StrategySpec.parse("rsi:t", {"period": 2, "oversold": 30, "overbought": 70})
    closes = [10.0, 9.0, 8.0, 7.0, 9.0, 10.0, 11.0, 9.0]
    rsi_line = reference_rsi(closes, 2)
    # RSI(2): index 2..3 at 0 (only losses), jumps above 30 at 4, back below 70 at 7.
    assert rsi_line[3] == 0.0 and rsi_line[4] is not None and rsi_line[4] > 30
    assert rsi_line[6] is not None and rsi_line[6] > 70 and rsi_line[7] is not None
    assert rsi_line[7] < 70
    assert scan(spec, candles_from(closes)) == [(4, Side.BUY), (7, Side.SELL)]


def test_ema_cross_signals_on_the_candle_of_the_cross() -> None:
    spec = StrategySpec.parse("ema_cross:t", {"fast": 2, "slow": 4})
    closes = [10.0, 10.0, 10.0, 10.0, 9.0, 8.0, 9.0, 11.0, 12.0, 10.0, 8.0]
    fast, slow = reference_ema(closes, 2), reference_ema(closes, 4)
    expected = []
    for i in range(4, len(closes)):
        f0, f1, s0, s1 = fast[i - 1], fast[i], slow[i - 1], slow[i]
        assert None not in (f0, f1, s0, s1)
        if f0 <= s0 and f1 > s1:  # type: ignore[operator]
            expected.append((i, Side.BUY))
        elif f0 >= s0 and f1 < s1:  # type: ignore[operator]
            expected.append((i, Side.SELL))
    assert expected == [(4, Side.SELL), (7, Side.BUY), (10, Side.SELL)]
    assert scan(spec, candles_from(closes)) == expected


def test_rsi_ema_ignores_a_cross_when_rsi_already_overextended() -> None:
    closes = [10.0, 10.0, 10.0, 10.0, 9.0, 8.0, 9.0, 11.0, 12.0, 10.0, 8.0]
    params = {"period": 2, "fast": 2, "slow": 4}
    loose = StrategySpec.parse("rsi_ema:t", {**params, "overbought": 90})
    strict = StrategySpec.parse("rsi_ema:t", {**params, "overbought": 85})
    # RSI(2) at the bullish cross (index 7) is about 87: below 90, above 85.
    assert reference_rsi(closes, 2)[7] == pytest.approx(86.96, abs=0.01)
    assert (7, Side.BUY) in scan(loose, candles_from(closes))
    assert (7, Side.BUY) not in scan(strict, candles_from(closes))


def test_evaluate_on_a_growing_series_agrees_with_scan() -> None:
    feed = ReplayFeed(DATA / "sample_candles.csv", speed=0)
    candles = feed.series("BTC_USDT")
    spec = StrategySpec.parse("rsi_ema:default")
    grown = [(i, s) for i in range(len(candles)) if (s := evaluate(spec, candles[: i + 1]))]
    assert grown == scan(spec, candles)
    assert len(grown) >= 5


def test_runner_matches_scan_and_ignores_stale_candles() -> None:
    feed = ReplayFeed(DATA / "sample_candles.csv", speed=0)
    candles = feed.series("ETH_USDT")
    spec = StrategySpec.parse("ema_cross:fast", {"fast": 5, "slow": 13})
    runner = StrategyRunner(spec, window=1000)
    got = []
    for i, candle in enumerate(candles):
        side = runner.push(candle)
        assert runner.push(candle) is None  # a repeated candle is not evaluated twice
        if side is not None:
            got.append((i, side))
    assert got == scan(spec, candles)
    with pytest.raises(StrategyError, match="warm-up"):
        StrategyRunner(spec, window=5)


# --- the shipped sample, replayed -------------------------------------------------------


def predict_sample_signals() -> list[tuple[str, str, int, str, Decimal]]:
    """Derive the expected signals with this test's own indicator, rule and throttle code."""
    import csv
    import tomllib

    config = tomllib.loads((DATA / "watchlist.sample.toml").read_text())
    rows: dict[str, list[dict[str, str]]] = {}
    with (DATA / "sample_candles.csv").open() as fh:
        for row in csv.DictReader(line for line in fh if not line.startswith("#")):
            rows.setdefault(row["symbol"], []).append(row)
    expected = []
    for entry in config["symbols"]:
        if not entry.get("enabled", True) or not entry.get("alert_enabled", True):
            continue
        kind = entry["strategy"].split(":")[0]
        p = {"period": 14, "oversold": 30, "overbought": 70, "fast": 9, "slow": 21}
        p.update(entry.get("params", {}))
        series = rows[entry["symbol"]]
        closes = [float(r["close"]) for r in series]
        r = reference_rsi(closes, p["period"])
        f, s = reference_ema(closes, p["fast"]), reference_ema(closes, p["slow"])
        last: dict[str, tuple[datetime, Decimal]] = {}
        for i in range(1, len(closes)):
            side = None
            ready = None not in (f[i - 1], f[i], s[i - 1], s[i])
            up = ready and f[i - 1] <= s[i - 1] and f[i] > s[i]  # type: ignore[operator]
            down = ready and f[i - 1] >= s[i - 1] and f[i] < s[i]  # type: ignore[operator]
            if kind == "rsi" and r[i - 1] is not None and r[i] is not None:
                if r[i - 1] <= p["oversold"] < r[i]:  # type: ignore[operator]
                    side = "BUY"
                elif r[i - 1] >= p["overbought"] > r[i]:  # type: ignore[operator]
                    side = "SELL"
            elif kind == "ema_cross":
                side = "BUY" if up else "SELL" if down else None
            elif kind == "rsi_ema" and r[i] is not None:
                if up and r[i] < p["overbought"]:  # type: ignore[operator]
                    side = "BUY"
                elif down and r[i] > p["oversold"]:  # type: ignore[operator]
                    side = "SELL"
            if side is None:
                continue
            when = datetime.fromisoformat(series[i]["timestamp"].replace("Z", "+00:00"))
            price = Decimal(series[i]["close"])
            if side in last:
                then, last_price = last[side]
                if (when - then).total_seconds() < entry.get("cooldown_seconds", 0):
                    continue
                change = abs(price - last_price) / last_price * 100
                if change < Decimal(str(entry.get("min_price_change_pct", 0))):
                    continue
            last[side] = (when, price)
            expected.append((entry["symbol"], entry["strategy"], i, side, price))
    return expected


async def replay_sample() -> list[tuple[str, str, int, str, Decimal]]:
    """Run the shipped watchlist through the real feed, runners and gates (clock: candle time)."""
    watchlist = load_watchlist(DATA / "watchlist.sample.toml")
    assert watchlist.feed is not None
    feed = watchlist.feed.build(default_speed=60)
    assert isinstance(feed, ReplayFeed)
    fast = ReplayFeed(feed.path, speed=0)
    store = MemoryThrottleStore()
    emitted = []
    for entry in watchlist.active():
        runner = StrategyRunner(entry.strategy)
        i = -1
        async for candle in fast.candles(entry.symbol):
            i += 1
            side = runner.push(candle)
            if side is None:
                continue
            candidate = Candidate(entry.symbol, side, entry.strategy.name, candle.close)
            rules = watchlist.gate_rules(entry.symbol, entry.strategy.name)
            if (await store.try_pass(candidate, rules, candle.ts)).allowed:
                emitted.append((entry.symbol, entry.strategy.name, i, side.value, candle.close))
    return emitted


async def test_replaying_the_sample_emits_exactly_the_predicted_signals() -> None:
    expected = predict_sample_signals()
    assert await replay_sample() == expected
    # The sample is meant for the demo: several BUYs and SELLs within its first minute
    # (60 candles at the sample's speed of 60), and the throttle holds some back.
    early = [e for e in expected if e[2] < 60]
    assert sum(1 for e in early if e[3] == "BUY") >= 3
    assert sum(1 for e in early if e[3] == "SELL") >= 3


async def test_the_throttle_holds_back_part_of_the_sample() -> None:
    watchlist = load_watchlist(DATA / "watchlist.sample.toml")
    feed = ReplayFeed(DATA / "sample_candles.csv", speed=0)
    raw = sum(len(scan(e.strategy, feed.series(e.symbol))) for e in watchlist.active())
    assert raw > len(await replay_sample()) > 0
