"""Watchlist files: the shipped sample loads; every bad entry is named in the error."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from services.signal_monitor.feeds import CcxtFeed, ReplayFeed
from services.signal_monitor.strategy import StrategyKind
from services.signal_monitor.throttle import GateRules
from services.signal_monitor.watchlist import (
    FeedConfig,
    Watchlist,
    WatchlistError,
    load_watchlist,
)

DATA = Path(__file__).parents[2] / "services/signal_monitor/data"
FEED = '[feed]\nkind = "replay"\npath = "candles.csv"\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "candles.csv").write_text("timestamp,open,high,low,close,volume\n")
    return tmp_path


def load_toml(folder: Path, body: str, *, feed: str = FEED) -> Watchlist:
    path = folder / "watchlist.toml"
    path.write_text(feed + body)
    return load_watchlist(path)


def test_the_shipped_sample_loads() -> None:
    watchlist = load_watchlist(DATA / "watchlist.sample.toml")
    assert watchlist.feed == FeedConfig(
        kind="replay", path=(DATA / "sample_candles.csv").resolve(), speed=60.0
    )
    names = [(e.symbol, e.strategy.name, e.enabled) for e in watchlist.entries]
    assert names == [
        ("BTC_USDT", "rsi_ema:default", True),
        ("BTC_USDT", "rsi:fast", True),
        ("ETH_USDT", "ema_cross:fast", True),
        ("ETH_USDT", "rsi:default", False),
    ]
    assert [e.strategy.name for e in watchlist.active()] == [
        "rsi_ema:default",
        "rsi:fast",
        "ema_cross:fast",
    ]
    assert watchlist.entries[1].strategy.params.period == 7
    assert watchlist.entries[2].strategy.kind is StrategyKind.EMA_CROSS
    assert watchlist.gate_rules("BTC_USDT", "rsi:fast") == GateRules(
        cooldown_seconds=300, min_price_change_pct=Decimal("0.2")
    )


def test_gate_rules_fall_back_to_defaults_and_carry_the_kill_switch(folder: Path) -> None:
    watchlist = load_toml(
        folder,
        "[defaults]\ncooldown_seconds = 30\nmin_price_change_pct = 0.5\n"
        '[[symbols]]\nsymbol = "BTC_USDT"\nstrategy = "rsi"\ncooldown_seconds = 90\n'
        '[[symbols]]\nsymbol = "SOL_USDT"\nstrategy = "rsi"\nalert_enabled = false\n',
    )
    assert watchlist.gate_rules("BTC_USDT", "rsi") == GateRules(
        cooldown_seconds=90, min_price_change_pct=Decimal("0.5")
    )
    assert watchlist.gate_rules("BTC_USDT", "tradingview") == GateRules(
        cooldown_seconds=30, min_price_change_pct=Decimal("0.5")
    )
    assert watchlist.gate_rules("ETH_USDT", "manual", kill_switch=True).kill_switch
    assert watchlist.gate_rules("SOL_USDT", "anything").alert_enabled is False
    assert watchlist.alert_enabled("ETH_USDT") is True


def test_an_empty_watchlist_runs_nothing_and_gates_nothing() -> None:
    empty = Watchlist.empty()
    assert empty.active() == () and empty.feed is None
    assert empty.gate_rules("BTC_USDT", "manual") == GateRules()


def test_yaml_works_like_toml(folder: Path) -> None:
    path = folder / "watchlist.yaml"
    path.write_text(
        "feed: {kind: ccxt, exchange: binance, timeframe: 5m, poll_seconds: 20}\n"
        "symbols:\n  - {symbol: ETH_USDT, strategy: 'ema_cross:x', params: {fast: 3, slow: 8}}\n"
    )
    watchlist = load_watchlist(path)
    assert watchlist.feed == FeedConfig(kind="ccxt", exchange="binance", timeframe="5m", poll_seconds=20.0)
    assert watchlist.entries[0].strategy.params.slow == 8


async def test_feed_config_builds_the_feed_it_describes(folder: Path) -> None:
    replay = load_toml(folder, "").feed
    assert replay is not None
    built = replay.build(default_speed=42)
    assert isinstance(built, ReplayFeed) and built.speed == 42
    ccxt_config = FeedConfig(kind="ccxt", exchange="binance", api_url="http://127.0.0.1:1")
    feed = ccxt_config.build(default_poll_seconds=15)
    assert isinstance(feed, CcxtFeed) and feed.poll_seconds == 15
    await feed.close()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[[symbols]]\nsymbol = "btc_usdt"\nstrategy = "rsi"\n', "symbols[0] (btc_usdt): symbol"),
        ('[[symbols]]\nsymbol = "BTC USDT"\nstrategy = "rsi"\n', "symbol must be upper-case"),
        ('[[symbols]]\nsymbol = "BTC_USDT"\n', "symbols[0] (BTC_USDT): missing strategy"),
        ('[[symbols]]\nsymbol = "BTC_USDT"\nstrategy = "macd"\n', "unknown kind 'macd'"),
        (
            '[[symbols]]\nsymbol = "BTC_USDT"\nstrategy = "rsi"\nparams = { fast = 3 }\n',
            "(BTC_USDT): strategy 'rsi': rsi takes",
        ),
        (
            '[[symbols]]\nsymbol = "A_B"\nstrategy = "rsi"\ncooldown_seconds = -1\n',
            "cooldown_seconds must be a number >= 0",
        ),
        (
            '[[symbols]]\nsymbol = "A_B"\nstrategy = "rsi"\nmin_price_change_pct = "1"\n',
            "min_price_change_pct must be a number >= 0",
        ),
        ('[[symbols]]\nsymbol = "A_B"\nstrategy = "rsi"\nenabled = "yes"\n', "enabled must be true"),
        ('[[symbols]]\nsymbol = "A_B"\nstrategy = "rsi"\ncooldown = 5\n', "unknown key(s) cooldown"),
        (
            '[[symbols]]\nsymbol = "A_B"\nstrategy = "rsi"\n[[symbols]]\nsymbol = "A_B"\nstrategy = "rsi"\n',
            "symbols[1] repeats A_B with rsi (first at symbols[0])",
        ),
        (
            '[[symbols]]\nsymbol = "A_B"\nstrategy = "rsi"\n'
            '[[symbols]]\nsymbol = "A_B"\nstrategy = "rsi:2"\nalert_enabled = false\n',
            "alert_enabled is per symbol, but symbols[0] and symbols[1] (A_B) disagree",
        ),
        ('[symbols]\nsymbol = "A_B"\n', "symbols must be a list"),
        ("[extra]\n", "unknown top-level key(s) extra"),
        ("[defaults]\ncooldown_seconds = inf\n", "defaults: cooldown_seconds must be finite"),
        ("[[symbols]\n", "is not valid toml"),
        ('[defaults]\nsymbol = "A_B"\n', "defaults: unknown key(s) symbol"),
    ],
)
def test_bad_entries_are_named(folder: Path, body: str, needle: str) -> None:
    with pytest.raises(WatchlistError) as err:
        load_toml(folder, body)
    assert needle in str(err.value)
    assert "watchlist.toml" in str(err.value)


@pytest.mark.parametrize(
    ("feed", "needle"),
    [
        ("", "missing [feed]"),
        ('[feed]\nkind = "kafka"\n', 'kind must be "replay" or "ccxt"'),
        ('[feed]\nkind = "replay"\n', "a replay feed needs path"),
        ('[feed]\nkind = "replay"\npath = "nope.csv"\n', "nope.csv does not exist"),
        ('[feed]\nkind = "replay"\npath = "candles.csv"\nspeed = -2\n', "speed must be a number"),
        ('[feed]\nkind = "ccxt"\n', "a ccxt feed needs exchange"),
        ('[feed]\nkind = "ccxt"\nexchange = "binance"\npoll_seconds = 0\n', "poll_seconds must be > 0"),
        ('[feed]\nkind = "ccxt"\nexchange = 7\n', "exchange must be a string"),
        ('[feed]\nkind = "replay"\npath = "candles.csv"\nsped = 1\n', "unknown key(s) sped"),
    ],
)
def test_bad_feeds_are_named(folder: Path, feed: str, needle: str) -> None:
    with pytest.raises(WatchlistError) as err:
        load_toml(folder, "", feed=feed)
    assert needle in str(err.value)


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(WatchlistError, match="cannot read watchlist"):
        load_watchlist(tmp_path / "absent.toml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(WatchlistError, match="top level"):
        load_watchlist(path)
