"""Feeds: the CSV replay (pacing, errors) and the ccxt poller against a local Binance stand-in."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from services.signal_monitor.feeds import (
    Candle,
    CcxtFeed,
    FeedError,
    ReplayFeed,
    make_ccxt_client,
    read_candles_csv,
    to_ccxt_symbol,
)

SAMPLE = Path(__file__).parents[2] / "services/signal_monitor/data/sample_candles.csv"
MINUTE_MS = 60_000
T0_MS = 1_764_000_000_000  # a whole minute


class FakeTime:
    """A clock that only moves when the code under test sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def take(it: AsyncIterator[Candle], n: int) -> list[Candle]:
    out = []
    async for candle in it:
        out.append(candle)
        if len(out) == n:
            break
    return out


# --- replay ------------------------------------------------------------------------------


@pytest.mark.parametrize(("speed", "gap"), [(60, 1.0), (120, 0.5), (6, 10.0)])
async def test_replay_spaces_candles_by_candle_time_over_speed(speed: float, gap: float) -> None:
    fake = FakeTime()
    feed = ReplayFeed(SAMPLE, speed, sleep=fake.sleep, clock=fake.clock)
    got = await take(feed.candles("BTC_USDT"), 5)
    assert got == feed.series("BTC_USDT")[:5]
    assert fake.sleeps == pytest.approx([0.0] + [gap] * 4)


async def test_replay_catches_up_when_the_consumer_was_slow() -> None:
    fake = FakeTime()
    feed = ReplayFeed(SAMPLE, 60, sleep=fake.sleep, clock=fake.clock)
    it = feed.candles("ETH_USDT")
    await anext(it)
    fake.now += 2.5  # the consumer spent 2.5 s on the first candle: candles 1 and 2 are due
    await anext(it)
    await anext(it)
    await anext(it)
    assert fake.sleeps == pytest.approx([0.0, 0.0, 0.0, 0.5])


@pytest.mark.parametrize("speed", [0, math.inf])
async def test_replay_without_speed_never_waits(speed: float) -> None:
    fake = FakeTime()
    feed = ReplayFeed(SAMPLE, speed, sleep=fake.sleep, clock=fake.clock)
    got = [c async for c in feed.candles("BTC_USDT")]
    assert len(got) == 300 and set(fake.sleeps) == {0}
    assert all(a.ts < b.ts for a, b in itertools.pairwise(got))


def test_sample_holds_two_real_looking_minute_series() -> None:
    series = read_candles_csv(SAMPLE)
    assert set(series) == {"BTC_USDT", "ETH_USDT"}
    for candles in series.values():
        assert len(candles) == 300
        assert {b.ts - a.ts for a, b in itertools.pairwise(candles)} == {timedelta(minutes=1)}
        for c in candles:
            assert c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "candles.csv"
    path.write_text(text)
    return path


def test_a_file_without_symbol_column_serves_any_symbol_and_reads_epoch_ms(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# comment\ntimestamp,open,high,low,close,volume\n"
        f"{T0_MS},1,2,0.5,1.5,3\n2025-11-24T16:01:00Z,1.5,2,1,1.75,0\n",
    )
    feed = ReplayFeed(path, 0)
    assert feed.symbols == frozenset()
    candles = feed.series("ANY_THING")
    assert candles[0].ts == datetime.fromtimestamp(T0_MS / 1000, tz=UTC)
    assert candles[1].close == Decimal("1.75") and candles[1].ts.tzinfo is not None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "is empty"),
        ("timestamp,open,high,low,close\n", "lacks column(s) volume"),
        ("timestamp,open,high,low,close,volume\n2025-01-01T00:00:00Z,1,2,x,1,1\n", ":2: bad"),
        ("timestamp,open,high,low,close,volume\n2025-01-01T00:00:00Z,1,2,1,-1,1\n", "close"),
        ("timestamp,open,high,low,close,volume\nyesterday,1,2,1,1,1\n", ":2: bad"),
        (
            "timestamp,open,high,low,close,volume\n"
            "2025-01-01T00:01:00Z,1,2,1,1,1\n2025-01-01T00:00:00Z,1,2,1,1,1\n",
            ":3: rows of the series must be in ascending time",
        ),
    ],
)
def test_bad_candle_files_say_where(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(FeedError) as err:
        ReplayFeed(write(tmp_path, text), 0)
    assert needle in str(err.value)


def test_replay_refuses_unknown_symbols_missing_files_and_negative_speed(tmp_path: Path) -> None:
    with pytest.raises(FeedError, match="no rows for DOGE_USDT; it has: BTC_USDT, ETH_USDT"):
        ReplayFeed(SAMPLE, 0).series("DOGE_USDT")
    with pytest.raises(FeedError, match="cannot read candle file"):
        ReplayFeed(tmp_path / "missing.csv", 0)
    with pytest.raises(FeedError, match="speed"):
        ReplayFeed(SAMPLE, -1)


def test_contract_symbols_map_to_ccxt_symbols() -> None:
    assert to_ccxt_symbol("BTC_USDT") == "BTC/USDT"
    assert to_ccxt_symbol("ETH-BTC") == "ETH/BTC"
    assert to_ccxt_symbol("BTC/USDT") == "BTC/USDT"
    assert to_ccxt_symbol("BTCUSDT") == "BTCUSDT"  # ccxt resolves exchange ids itself


# --- ccxt against a local Binance stand-in ---------------------------------------------------


@dataclass
class Binance:
    """Serves the two endpoints ccxt's binance needs for fetch_ohlcv on a spot market."""

    klines: list[list[Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    fail_next: int = 0
    url: str = ""

    async def exchange_info(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        lot = {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000", "stepSize": "0.00001"}
        price = {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1e6", "tickSize": "0.01"}
        market = {
            "symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT",
            "baseAssetPrecision": 8, "quotePrecision": 8, "quoteAssetPrecision": 8,
            "orderTypes": ["LIMIT", "MARKET"], "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False, "filters": [price, lot],
            "permissions": ["SPOT"], "permissionSets": [["SPOT"]],
        }  # fmt: skip
        return web.json_response({"timezone": "UTC", "serverTime": T0_MS, "symbols": [market]})

    async def klines_route(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=503, text="Service Unavailable")
        if request.query.get("symbol") != "BTCUSDT":
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        limit = int(request.query.get("limit", "500"))
        return web.json_response(self.klines[-limit:])

    def add(self, minute: int, close: str) -> None:
        ts = T0_MS + minute * MINUTE_MS
        self.klines.append([ts, "43000.10", "43100", "42900", close, "12.5", ts + MINUTE_MS - 1,
                            "537500", 42, "6", "258000", "0"])  # fmt: skip


@pytest.fixture
async def binance() -> AsyncIterator[Binance]:
    stand_in = Binance()
    app = web.Application()
    app.router.add_get("/api/v3/exchangeInfo", stand_in.exchange_info)
    app.router.add_get("/api/v3/klines", stand_in.klines_route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    stand_in.url = f"http://127.0.0.1:{port}"
    yield stand_in
    await runner.cleanup()


@pytest.fixture
async def client(binance: Binance) -> AsyncIterator[Any]:
    # Spot only: the stand-in does not serve the futures exchangeInfo endpoints.
    ccxt_client = make_ccxt_client(
        "binance", api_url=binance.url, options={"fetchMarkets": {"types": ["spot"]}}
    )
    yield ccxt_client
    await ccxt_client.close()


class Script:
    """Fake time for the poller whose sleeps run the next step of the scenario."""

    def __init__(self, now_ms: int, steps: list[Callable[[], None]]) -> None:
        self.now_ms = now_ms
        self.steps = steps
        self.polls = 0

    def clock(self) -> float:
        return self.now_ms / 1000

    async def sleep(self, seconds: float) -> None:
        self.polls += 1
        if self.steps:
            self.steps.pop(0)()


def minute(n: int, plus_s: int = 0) -> int:
    return T0_MS + n * MINUTE_MS + plus_s * 1000


async def test_ccxt_feed_emits_each_closed_candle_once(binance: Binance, client: Any) -> None:
    for n, close in enumerate(["43000.5", "43010.25", "43020", "43030.75", "43040"]):
        binance.add(n, close)

    def step_1() -> None:  # minute 4 closes, minute 5 opens
        binance.add(5, "43050.5")
        script.now_ms = minute(5, 10)

    def step_2() -> None:  # nothing new on this poll
        script.now_ms = minute(5, 40)

    def step_3() -> None:  # minute 5 closes, 6 opens
        binance.add(6, "43060")
        script.now_ms = minute(6, 5)

    script = Script(minute(4, 30), [step_1, step_2, step_3])
    feed = CcxtFeed("binance", "1m", 30, client=client, clock=script.clock, sleep=script.sleep)
    got = await take(feed.candles("BTC_USDT"), 6)
    assert [c.ts for c in got] == [datetime.fromtimestamp(minute(n) / 1000, tz=UTC) for n in range(6)]
    assert [c.close for c in got] == [
        Decimal(p) for p in ["43000.5", "43010.25", "43020", "43030.75", "43040", "43050.5"]
    ]
    assert got[0].volume == Decimal("12.5") and got[0].open == Decimal("43000.1")
    assert script.polls == 3  # emitted 4, then 1, then none, then 1
    klines = [r for r in binance.requests if r.startswith("/api/v3/klines")]
    assert len(klines) == 4 and all("symbol=BTCUSDT" in r and "interval=1m" in r for r in klines)
    assert "limit=200" in klines[0]
    await feed.close()
    assert not client.session.closed  # a client passed in stays the caller's


async def test_ccxt_feed_rides_out_an_unavailable_exchange(binance: Binance, client: Any) -> None:
    binance.add(0, "43000")
    binance.add(1, "43001")
    binance.fail_next = 1

    script = Script(minute(2, 1), [])
    feed = CcxtFeed("binance", "1m", 30, client=client, clock=script.clock, sleep=script.sleep)
    got = await take(feed.candles("BTC_USDT"), 2)
    assert [c.close for c in got] == [Decimal("43000"), Decimal("43001")]
    assert script.polls == 1  # the failed poll, then a good one


async def test_ccxt_feed_names_a_symbol_the_exchange_does_not_list(client: Any) -> None:
    script = Script(minute(2), [])
    feed = CcxtFeed("binance", "1m", 30, client=client, clock=script.clock, sleep=script.sleep)
    with pytest.raises(FeedError, match="binance does not list DOGE_USDT"):
        await take(feed.candles("DOGE_USDT"), 1)


async def test_ccxt_feed_built_from_an_exchange_id_owns_and_closes_its_client(
    binance: Binance,
) -> None:
    feed = CcxtFeed("binance", "1m", 30, api_url=binance.url)
    assert feed.client.urls["api"]["public"] == f"{binance.url}/api/v3"
    await feed.close()
    with pytest.raises(FeedError, match="unknown ccxt exchange id 'nosuchexchange'"):
        make_ccxt_client("nosuchexchange")
