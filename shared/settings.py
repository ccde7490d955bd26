"""Typed settings, one piece per concern, read from the environment and `.env`."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDERS = {"", "changeme", "change-me", "xxx", "your-token", "your_api_key", "secret", "todo"}


class SettingsError(RuntimeError):
    """A setting is missing or wrong; the message names the variable."""


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_file_encoding="utf-8")


class RuntimeSettings(_Base):
    """Where things live: data dir, bind host, key prefix, logging."""

    intentflow_data_dir: Path = Path(".intentflow")
    bind_host: str = "127.0.0.1"
    stream_prefix: str = Field(default="", alias="INTENTFLOW_STREAM_PREFIX")
    stream_maxlen: int = Field(default=1_000_000, alias="INTENTFLOW_STREAM_MAXLEN", ge=1000)
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    log_format: str = Field(default="json", alias="LOG_FORMAT")


class RedisSettings(_Base):
    redis_url: str | None = None


class DatabaseSettings(_Base):
    database_url: str | None = None

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("DATABASE_URL must start with postgresql://")
        return value


class ConsumerSettings(_Base):
    claim_idle_ms: int = Field(default=30_000, ge=100)
    max_deliveries: int = Field(default=5, ge=1)
    batch_size: int = Field(default=100, ge=1, le=1000, alias="CONSUMER_BATCH_SIZE")
    # The orchestrator's own read size: its cost per batch (five round trips, a transaction,
    # the event loop's turns) is mostly fixed, so under a backlog larger batches decide more
    # signals per second (tests/bench: 100 → 1000 took a drain from ~11,500/s to ~16,500/s);
    # a trickle still makes small batches (a read returns what has arrived).
    orchestrator_batch_size: int = Field(default=1000, ge=1, le=5000, alias="ORCHESTRATOR_BATCH_SIZE")
    block_ms: int = Field(default=1000, ge=10, le=10_000, alias="CONSUMER_BLOCK_MS")
    # Batches one orchestrator process decides at once (it reads the next while earlier ones
    # wait on PostgreSQL; each holds one of the pool's connections, in_flight + 1 of them,
    # until it commits); the notifier always takes one at a time, in order, per chat.
    orchestrator_in_flight: int = Field(default=4, ge=1, le=8, alias="ORCHESTRATOR_IN_FLIGHT")


class TradingMode(StrEnum):
    OFF = "off"
    PAPER = "paper"
    LIVE = "live"


def parse_balances(text: str) -> dict[str, Decimal]:
    """Parse `USDT=10000,BTC=0` into {asset: amount}."""
    out: dict[str, Decimal] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        asset, sep, amount = part.partition("=")
        if not sep or not asset.strip():
            raise ValueError(f"PAPER_BALANCES item {part!r} must look like ASSET=AMOUNT")
        value = Decimal(amount.strip())
        if not value.is_finite() or value < 0:
            raise ValueError(f"PAPER_BALANCES amount for {asset} must be a number >= 0")
        out[asset.strip().upper()] = value
    return out


class TradingSettings(_Base):
    trading_mode: TradingMode = TradingMode.PAPER
    exchange: str | None = None
    exchange_api_key: SecretStr | None = None
    exchange_secret: SecretStr | None = None
    exchange_sandbox: bool = False
    exchange_api_url: str | None = Field(default=None, alias="EXCHANGE_API_URL")
    paper_balances: str = "USDT=10000"
    paper_reject_symbols: str = ""
    order_notional_usd: Decimal = Field(default=Decimal("100"), gt=0)
    dedup_window_seconds: float = Field(default=60, ge=0)

    @field_validator("paper_balances")
    @classmethod
    def _balances(cls, value: str) -> str:
        parse_balances(value)
        return value

    @property
    def balances(self) -> dict[str, Decimal]:
        return parse_balances(self.paper_balances)

    @property
    def reject_symbols(self) -> frozenset[str]:
        return frozenset(s.strip().upper() for s in self.paper_reject_symbols.split(",") if s.strip())

    def require_live_credentials(self) -> None:
        """Stop live mode at start when a credential is missing or a placeholder."""
        if self.trading_mode is not TradingMode.LIVE:
            return
        if not self.exchange:
            raise SettingsError("TRADING_MODE=live needs EXCHANGE (a ccxt exchange id such as binance)")
        for name, value in (
            ("EXCHANGE_API_KEY", self.exchange_api_key),
            ("EXCHANGE_SECRET", self.exchange_secret),
        ):
            if value is None or value.get_secret_value().strip().lower() in PLACEHOLDERS:
                raise SettingsError(f"TRADING_MODE=live needs {name}; it is missing or a placeholder")


class TelegramSettings(_Base):
    telegram_bot_token: SecretStr | None = None
    telegram_chat_id: str | None = None
    telegram_api_url: str = "https://api.telegram.org"
    telegram_sandbox_port: int = 8081
    telegram_per_chat_per_s: float = Field(default=1.0, gt=0, alias="TELEGRAM_PER_CHAT_PER_S")
    telegram_group_per_min: float = Field(default=20.0, gt=0, alias="TELEGRAM_GROUP_PER_MIN")
    telegram_global_per_s: float = Field(default=30.0, gt=0, alias="TELEGRAM_GLOBAL_PER_S")

    def require(self) -> tuple[str, str]:
        """Return (token, chat id) or stop with the missing variable's name."""
        token = self.telegram_bot_token.get_secret_value() if self.telegram_bot_token else ""
        if token.strip().lower() in PLACEHOLDERS:
            raise SettingsError("the notifier needs TELEGRAM_BOT_TOKEN")
        if not self.telegram_chat_id:
            raise SettingsError("the notifier needs TELEGRAM_CHAT_ID")
        return token, self.telegram_chat_id


class WebhookSettings(_Base):
    webhook_secret: SecretStr | None = None
    webhook_port: int = 8001
    webhook_rate_per_min: int = Field(default=600, ge=1, alias="WEBHOOK_RATE_PER_MIN")


class DiagnosticsSettings(_Base):
    diagnostics_token: SecretStr | None = None
    diagnostics_port: int = 8000
    diagnostics_url: str | None = Field(default=None, alias="DIAGNOSTICS_URL")


class SignalMonitorSettings(_Base):
    watchlist_file: Path | None = None
    signal_kill_switch: bool = Field(default=False, alias="SIGNAL_KILL_SWITCH")
    replay_speed: float = Field(default=60.0, gt=0, alias="REPLAY_SPEED")
    feed_poll_seconds: float = Field(default=60.0, gt=0, alias="FEED_POLL_SECONDS")


class WatchdogSettings(_Base):
    watchdog_interval_seconds: float = Field(default=60.0, gt=0)
    watchdog_window_hours: int = Field(default=12, ge=1, le=720, alias="WATCHDOG_WINDOW_HOURS")
    watchdog_grace_seconds: int = Field(default=60, ge=0, le=3600, alias="WATCHDOG_GRACE_SECONDS")
    watchdog_max_repairs: int = Field(default=3, ge=1, alias="WATCHDOG_MAX_REPAIRS")


class Settings:
    """All pieces together; each service takes the pieces it needs."""

    def __init__(self) -> None:
        self.runtime = RuntimeSettings()
        self.redis = RedisSettings()
        self.database = DatabaseSettings()
        self.consumer = ConsumerSettings()
        self.trading = TradingSettings()
        self.telegram = TelegramSettings()
        self.webhook = WebhookSettings()
        self.diagnostics = DiagnosticsSettings()
        self.signal_monitor = SignalMonitorSettings()
        self.watchdog = WatchdogSettings()


def load_settings() -> Settings:
    """Read every settings piece; a bad value raises SettingsError saying which and why."""
    from pydantic import ValidationError

    from shared.events import describe_errors

    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(f"bad configuration: {describe_errors(exc)}") from None


def known_variables() -> set[str]:
    """Every environment variable a settings piece reads (compose and .env.example are checked against it)."""
    names: set[str] = set()
    for cls in _Base.__subclasses__():
        for name, field in cls.model_fields.items():
            names.add((field.alias or name).upper())
    return names
