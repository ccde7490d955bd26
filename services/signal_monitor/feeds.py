"""Market-data feeds behind one small protocol: a CSV replay and a ccxt poller.

A `Candle.ts` is the candle's open time (ccxt's convention), timezone-aware in UTC.
Prices are `Decimal` so the price a signal carries is exactly the candle's close.
"""

from __future__ import annotations

import asyncio
import csv
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

from shared.logging import get_logger

log = get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]
CSV_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")


class FeedError(ValueError):
    """A feed is misconfigured or its data is unreadable; the message says where."""


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV candle; `ts` is its open time (aware, UTC)."""

    ts: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None:
            raise ValueError("Candle.ts must be timezone-aware")
        for name in ("open", "high", "low", "close"):
            value: Decimal = getattr(self, name)
            if not value.is_finite() or value <= 0:
                raise ValueError(f"Candle.{name} must be a finite number > 0, not {value}")
        if not self.volume.is_finite() or self.volume < 0:
            raise ValueError(f"Candle.volume must be a finite number >= 0, not {self.volume}")


class Feed(Protocol):
    """A source of closed candles, per symbol, oldest first."""

    def candles(self, symbol: str) -> AsyncIterator[Candle]:
        """Yield closed candles of `symbol` as they become available."""
        ...

    async def close(self) -> None:
        """Release connections the feed opened."""
        ...


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO-8601 time (naive means UTC) or epoch milliseconds into an aware UTC datetime."""
    text = text.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{text!r:.40} is not a number") from None


def read_candles_csv(path: Path) -> dict[str | None, list[Candle]]:
    """Read an OHLCV CSV into candles per symbol (key None when the file has no `symbol` column).

    Lines starting with `#` are comments. Columns: timestamp, open, high, low, close, volume,
    and optionally symbol; rows of one symbol must be in ascending time.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FeedError(f"cannot read candle file {path}: {exc.strerror or exc}") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if not line.startswith("#")]
    rows = csv.reader(line for _, line in lines)
    header = next(rows, None)
    if header is None:
        want = ",".join(CSV_COLUMNS)
        raise FeedError(f"candle file {path} is empty; it needs a header such as symbol,{want}")
    header = [h.strip().lower() for h in header]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        lacking = ", ".join(missing)
        raise FeedError(f"candle file {path} lacks column(s) {lacking}; its header is {header}")
    col = {name: header.index(name) for name in header}
    out: dict[str | None, list[Candle]] = {}
    for (line_no, _), row in zip(lines[1:], rows, strict=False):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            symbol = row[col["symbol"]].strip() if "symbol" in col else None
            candle = Candle(
                ts=parse_timestamp(row[col["timestamp"]]),
                **{name: _decimal(row[col[name]]) for name in CSV_COLUMNS[1:]},
            )
        except (ValueError, IndexError) as exc:
            raise FeedError(f"{path}:{line_no}: bad candle row: {exc}") from None
        series = out.setdefault(symbol, [])
        if series and candle.ts <= series[-1].ts:
            what = symbol or "the series"
            raise FeedError(f"{path}:{line_no}: rows of {what} must be in ascending time")
        series.append(candle)
    return out


class ReplayFeed:
    """Play a CSV of candles at `speed` candle-seconds per real second (0 or inf: no waits)."""

    def __init__(
        self,
        csv_path: Path | str,
        speed: float = 60.0,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if math.isnan(speed) or speed < 0:
            raise FeedError(f"replay speed must be >= 0 (0 or inf: no waiting), not {speed}")
        self.path = Path(csv_path)
        self.speed = speed
        self._series = read_candles_csv(self.path)
        self._sleep = sleep
        self._clock = clock

    @property
    def symbols(self) -> frozenset[str]:
        """Return the symbols the file holds (empty when it has no symbol column)."""
        return frozenset(s for s in self._series if s is not None)

    def series(self, symbol: str) -> list[Candle]:
        """Return every candle of `symbol` in the file, without pacing."""
        if None in self._series:
            return list(self._series[None])
        if symbol not in self._series:
            have = ", ".join(sorted(self.symbols)) or "none"
            raise FeedError(f"candle file {self.path} has no rows for {symbol}; it has: {have}")
        return list(self._series[symbol])

    async def candles(self, symbol: str) -> AsyncIterator[Candle]:
        """Yield the candles of `symbol`, spaced by their time difference divided by `speed`."""
        series = self.series(symbol)
        paced = 0 < self.speed < math.inf
        start = self._clock()
        for candle in series:
            if paced:
                due = (candle.ts - series[0].ts).total_seconds() / self.speed
                delay = due - (self._clock() - start)
                await self._sleep(max(delay, 0.0))
            else:
                await self._sleep(0)  # let other tasks run between candles
            yield candle

    async def close(self) -> None:
        """Nothing to release."""


def to_ccxt_symbol(symbol: str) -> str:
    """Map a contract symbol (BTC_USDT, BTC-USDT, BTC/USDT) to ccxt's unified form (BTC/USDT)."""
    for sep in ("_", "-"):
        if sep in symbol:
            base, _, quote = symbol.partition(sep)
            return f"{base}/{quote}"
    return symbol


def make_ccxt_client(exchange_id: str, *, api_url: str | None = None, **config: Any) -> Any:
    """Build ccxt's async client for `exchange_id`; `api_url` replaces the host of every API url."""
    import ccxt.async_support as ccxt_async

    cls = getattr(ccxt_async, exchange_id, None)
    if cls is None or exchange_id not in ccxt_async.exchanges:
        raise FeedError(f"unknown ccxt exchange id {exchange_id!r} (e.g. binance, kraken, okx)")
    client = cls({"enableRateLimit": True, **config})
    if api_url is not None:
        client.urls["api"] = _rehost(client.urls.get("api"), api_url.rstrip("/"))
    return client


def _rehost(urls: Any, base: str) -> Any:
    from urllib.parse import urlsplit

    if isinstance(urls, dict):
        return {key: _rehost(value, base) for key, value in urls.items()}
    if isinstance(urls, str):
        return base + urlsplit(urls).path
    return urls


class CcxtFeed:
    """Poll `fetch_ohlcv` of a ccxt exchange and yield each closed candle once.

    Without `client` it builds ccxt's async client for `exchange_id` (hosts replaced by
    `api_url` when given) and closes it in `close()`; a client passed in stays the caller's.
    """

    def __init__(
        self,
        exchange_id: str,
        timeframe: str = "1m",
        poll_seconds: float = 60.0,
        client: Any | None = None,
        *,
        api_url: str | None = None,
        history: int = 200,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if poll_seconds <= 0:
            raise FeedError(f"poll_seconds must be > 0, not {poll_seconds}")
        self._owns_client = client is None
        self.client = client if client is not None else make_ccxt_client(exchange_id, api_url=api_url)
        self.timeframe = timeframe
        self.poll_seconds = poll_seconds
        self.history = history
        self._clock = clock
        self._sleep = sleep

    async def candles(self, symbol: str) -> AsyncIterator[Candle]:
        """Yield closed candles: up to `history` recent ones, then each new one as it closes."""
        import ccxt.async_support as ccxt_async

        market = to_ccxt_symbol(symbol)
        frame_ms = int(self.client.parse_timeframe(self.timeframe) * 1000)
        last_ts: int | None = None
        while True:
            try:
                rows = await self.client.fetch_ohlcv(market, self.timeframe, limit=self.history)
            except ccxt_async.BadSymbol as exc:
                where = self.client.id
                raise FeedError(f"{where} does not list {symbol} ({market}): {exc}") from None
            except (ccxt_async.NetworkError, ccxt_async.ExchangeNotAvailable) as exc:
                # Transient: the next poll tries again; candles missed meanwhile come with it.
                log.warning("feed.poll_failed", symbol=symbol, exchange=self.client.id, error=str(exc))
                rows = []
            for candle_ts, candle in closed_candles(rows, frame_ms, self._clock() * 1000, last_ts):
                last_ts = candle_ts
                yield candle
            await self._sleep(self.poll_seconds)

    async def close(self) -> None:
        """Close the ccxt client if this feed created it."""
        if self._owns_client:
            await self.client.close()


def closed_candles(
    rows: Iterable[Sequence[Any]], frame_ms: int, now_ms: float, after_ms: int | None
) -> list[tuple[int, Candle]]:
    """Pick the ccxt OHLCV rows closed by `now_ms` and newer than `after_ms`, oldest first."""
    out: list[tuple[int, Candle]] = []
    for row in sorted(rows, key=lambda r: r[0]):
        ts = int(row[0])
        if ts + frame_ms > now_ms or (after_ms is not None and ts <= after_ms):
            continue
        if any(v is None for v in row[1:6]):
            continue  # some exchanges send empty candles for quiet minutes; never invent prices
        out.append(
            (
                ts,
                Candle(
                    ts=datetime.fromtimestamp(ts / 1000, tz=UTC),
                    open=Decimal(str(row[1])),
                    high=Decimal(str(row[2])),
                    low=Decimal(str(row[3])),
                    close=Decimal(str(row[4])),
                    volume=Decimal(str(row[5])),
                ),
            )
        )
    return out
