"""The strategy engine's watchlist: which symbols to watch, with which strategy, feed and gates.

Loaded from TOML (`.toml`) or YAML (`.yaml`/`.yml`); see data/watchlist.sample.toml::

    [feed]                      # required: where candles come from
    kind = "replay"             # "replay" (a CSV) or "ccxt" (poll an exchange)
    path = "sample_candles.csv" # replay: relative to the watchlist file
    speed = 60                  # replay: candle-seconds per second (optional)
    # exchange = "binance"; timeframe = "1m"; poll_seconds = 30; api_url = "..."  (ccxt)

    [defaults]                  # optional: gates for entries and for webhook/manual signals
    cooldown_seconds = 0
    min_price_change_pct = 0

    [[symbols]]
    symbol = "BTC_USDT"
    strategy = "rsi_ema:default"
    params = { period = 14 }    # optional overrides of the strategy's parameters
    enabled = true              # false: the engine does not run this entry
    alert_enabled = true        # per symbol: false holds back every signal of the symbol
    cooldown_seconds = 300
    min_price_change_pct = 0.2
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml

from services.signal_monitor.feeds import CcxtFeed, Feed, ReplayFeed
from services.signal_monitor.strategy import StrategyError, StrategySpec
from services.signal_monitor.throttle import GateRules
from shared.events import SYMBOL_RE

ENTRY_KEYS = frozenset(
    {"symbol", "strategy", "params", "enabled", "alert_enabled"}
    | {"cooldown_seconds", "min_price_change_pct"}
)
GATE_KEYS = frozenset({"enabled", "alert_enabled", "cooldown_seconds", "min_price_change_pct"})
FEED_KEYS = frozenset({"kind", "path", "speed", "exchange", "timeframe", "poll_seconds", "api_url"})


class WatchlistError(ValueError):
    """The watchlist file is unreadable or an entry is wrong; the message names the entry."""


@dataclass(frozen=True)
class FeedConfig:
    """Where the engine reads candles from."""

    kind: Literal["replay", "ccxt"]
    path: Path | None = None
    speed: float | None = None
    exchange: str | None = None
    timeframe: str = "1m"
    poll_seconds: float | None = None
    api_url: str | None = None

    def build(self, *, default_speed: float = 60.0, default_poll_seconds: float = 60.0) -> Feed:
        """Create the feed; the watchlist's speed/poll_seconds win over the defaults given."""
        if self.kind == "replay":
            assert self.path is not None
            speed = self.speed if self.speed is not None else default_speed
            return ReplayFeed(self.path, speed)
        assert self.exchange is not None
        poll = self.poll_seconds if self.poll_seconds is not None else default_poll_seconds
        return CcxtFeed(self.exchange, self.timeframe, poll, api_url=self.api_url)


@dataclass(frozen=True)
class Gates:
    """Gate settings of an entry, or the defaults."""

    enabled: bool = True
    alert_enabled: bool = True
    cooldown_seconds: float = 0.0
    min_price_change_pct: Decimal = Decimal(0)


@dataclass(frozen=True)
class WatchEntry:
    """One strategy run on one symbol, with its gates."""

    symbol: str
    strategy: StrategySpec
    gates: Gates = field(default_factory=Gates)

    @property
    def enabled(self) -> bool:
        return self.gates.enabled


@dataclass(frozen=True)
class Watchlist:
    """Entries, feed and default gates; an empty watchlist runs nothing and throttles nothing."""

    entries: tuple[WatchEntry, ...] = ()
    feed: FeedConfig | None = None
    defaults: Gates = field(default_factory=Gates)

    @classmethod
    def empty(cls) -> Watchlist:
        """Return the watchlist used when WATCHLIST_FILE is unset."""
        return cls()

    def active(self) -> tuple[WatchEntry, ...]:
        """Return the entries the engine runs (enabled ones)."""
        return tuple(e for e in self.entries if e.enabled)

    def alert_enabled(self, symbol: str) -> bool:
        """Tell whether signals of `symbol` may be sent at all."""
        for entry in self.entries:
            if entry.symbol == symbol:
                return entry.gates.alert_enabled
        return self.defaults.alert_enabled

    def gate_rules(self, symbol: str, strategy: str, *, kill_switch: bool = False) -> GateRules:
        """Return the gates for a signal: its entry's throttle if listed, else the defaults."""
        gates = next(
            (e.gates for e in self.entries if e.symbol == symbol and e.strategy.name == strategy),
            self.defaults,
        )
        return GateRules(
            kill_switch=kill_switch,
            alert_enabled=self.alert_enabled(symbol),
            cooldown_seconds=gates.cooldown_seconds,
            min_price_change_pct=gates.min_price_change_pct,
        )


def load_watchlist(path: Path | str) -> Watchlist:
    """Read a watchlist file (TOML or YAML, by extension), or raise WatchlistError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WatchlistError(f"cannot read watchlist {path}: {exc.strerror or exc}") from None
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    try:
        data = (yaml.safe_load(text) or {}) if is_yaml else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise WatchlistError(f"watchlist {path} is not valid {path.suffix[1:]}: {exc}") from None
    if not isinstance(data, Mapping):
        raise WatchlistError(f"watchlist {path} must be a table/mapping at the top level")
    return parse_watchlist(data, source=str(path), base_dir=path.parent)


def parse_watchlist(data: Mapping[str, Any], *, source: str, base_dir: Path) -> Watchlist:
    """Build a Watchlist from already-decoded data; `source` names it in errors."""
    unknown = sorted(set(data) - {"feed", "defaults", "symbols"})
    if unknown:
        raise WatchlistError(
            f"{source}: unknown top-level key(s) {', '.join(unknown)}; use feed, defaults, symbols"
        )
    if "feed" not in data:
        raise WatchlistError(f'{source}: missing [feed] (kind = "replay" or "ccxt")')
    feed = _feed(_table(data["feed"], f"{source}: feed"), f"{source}: feed", base_dir)
    defaults_label = f"{source}: defaults"
    raw_defaults = _table(data.get("defaults", {}), defaults_label)
    if set(raw_defaults) - GATE_KEYS:
        extra = ", ".join(sorted(set(raw_defaults) - GATE_KEYS))
        allowed = ", ".join(sorted(GATE_KEYS))
        raise WatchlistError(f"{defaults_label}: unknown key(s) {extra}; allowed: {allowed}")
    defaults = _gates(raw_defaults, Gates(), defaults_label)
    raw_entries = data.get("symbols", [])
    if not isinstance(raw_entries, list):
        raise WatchlistError(f"{source}: symbols must be a list of entries ([[symbols]] in TOML)")
    entries: list[WatchEntry] = []
    for i, raw in enumerate(raw_entries):
        label = f"{source}: symbols[{i}]"
        if isinstance(raw, Mapping) and isinstance(raw.get("symbol"), str):
            label += f" ({raw['symbol']})"
        entries.append(_entry(_table(raw, label), defaults, label))
    _check_consistent(entries, source)
    return Watchlist(entries=tuple(entries), feed=feed, defaults=defaults)


def _table(value: Any, label: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise WatchlistError(f"{label} must be a table of key = value, not {value!r:.40}")
    return value


def _entry(raw: Mapping[str, Any], defaults: Gates, label: str) -> WatchEntry:
    unknown = sorted(set(raw) - ENTRY_KEYS)
    if unknown:
        allowed = ", ".join(sorted(ENTRY_KEYS))
        raise WatchlistError(f"{label}: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    symbol = raw.get("symbol")
    if not isinstance(symbol, str) or len(symbol) > 32 or not SYMBOL_RE.fullmatch(symbol):
        raise WatchlistError(
            f"{label}: symbol must be upper-case letters and digits with at most one _, / or - "
            f"(e.g. BTC_USDT), not {symbol!r:.40}"
        )
    if "strategy" not in raw:
        raise WatchlistError(f'{label}: missing strategy (e.g. strategy = "rsi_ema:default")')
    params = raw.get("params", {})
    try:
        spec = StrategySpec.parse(raw["strategy"], _table(params, f"{label}: params"))
    except StrategyError as exc:
        raise WatchlistError(f"{label}: {exc}") from None
    return WatchEntry(symbol=symbol, strategy=spec, gates=_gates(raw, defaults, label))


def _gates(raw: Mapping[str, Any], base: Gates, label: str) -> Gates:
    values: dict[str, Any] = {
        "enabled": base.enabled,
        "alert_enabled": base.alert_enabled,
        "cooldown_seconds": base.cooldown_seconds,
        "min_price_change_pct": base.min_price_change_pct,
    }
    for key in GATE_KEYS & set(raw):
        value = raw[key]
        if key in ("enabled", "alert_enabled"):
            if not isinstance(value, bool):
                raise WatchlistError(f"{label}: {key} must be true or false, not {value!r:.40}")
            values[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise WatchlistError(f"{label}: {key} must be a number >= 0, not {value!r:.40}")
        if math.isinf(value):
            raise WatchlistError(f"{label}: {key} must be finite")
        values[key] = Decimal(str(value)) if key == "min_price_change_pct" else float(value)
    return Gates(**values)


def _check_consistent(entries: list[WatchEntry], source: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    alerts: dict[str, tuple[int, bool]] = {}
    for i, entry in enumerate(entries):
        pair = (entry.symbol, entry.strategy.name)
        if pair in seen:
            raise WatchlistError(
                f"{source}: symbols[{i}] repeats {entry.symbol} with {entry.strategy.name} "
                f"(first at symbols[{seen[pair]}]); give the second a different strategy label"
            )
        seen[pair] = i
        first = alerts.setdefault(entry.symbol, (i, entry.gates.alert_enabled))
        if first[1] != entry.gates.alert_enabled:
            raise WatchlistError(
                f"{source}: alert_enabled is per symbol, but symbols[{first[0]}] and symbols[{i}] "
                f"({entry.symbol}) disagree; set the same value on both"
            )


def _feed(raw: Mapping[str, Any], label: str, base_dir: Path) -> FeedConfig:
    unknown = sorted(set(raw) - FEED_KEYS)
    if unknown:
        allowed = ", ".join(sorted(FEED_KEYS))
        raise WatchlistError(f"{label}: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    kind = raw.get("kind")
    for key in ("speed", "poll_seconds"):
        value = raw.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0
        ):
            raise WatchlistError(f"{label}: {key} must be a number >= 0, not {value!r:.40}")
    for key in ("path", "exchange", "timeframe", "api_url"):
        if key in raw and not isinstance(raw[key], str):
            raise WatchlistError(f"{label}: {key} must be a string, not {raw[key]!r:.40}")
    if kind == "replay":
        if "path" not in raw:
            raise WatchlistError(f'{label}: a replay feed needs path = "candles.csv"')
        path = (base_dir / raw["path"]).resolve()
        if not path.is_file():
            raise WatchlistError(f"{label}: candle file {path} does not exist")
        speed = raw.get("speed")
        return FeedConfig(kind="replay", path=path, speed=None if speed is None else float(speed))
    if kind == "ccxt":
        if "exchange" not in raw:
            raise WatchlistError(f'{label}: a ccxt feed needs exchange = "binance" (a ccxt id)')
        poll = raw.get("poll_seconds")
        if poll is not None and poll <= 0:
            raise WatchlistError(f"{label}: poll_seconds must be > 0")
        return FeedConfig(
            kind="ccxt",
            exchange=raw["exchange"],
            timeframe=raw.get("timeframe", "1m"),
            poll_seconds=None if poll is None else float(poll),
            api_url=raw.get("api_url"),
        )
    raise WatchlistError(f'{label}: kind must be "replay" or "ccxt", not {kind!r:.40}')
