"""What `intentflow up` runs and says: child commands, their environment, restart pacing, the banner.

Pure functions only; the supervisor and the command do the I/O.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SERVICES = ("signal-monitor", "orchestrator", "notifier", "diagnostics")
SANDBOX = "telegram-sandbox"
SANDBOX_CHAT_ID = "1"
WEBHOOK_SECRET_FILE = "webhook_secret"
ENDPOINTS_FILE = "up.json"
DEMO_WATCHLIST = Path(__file__).resolve().parents[1] / "signal_monitor" / "data" / "watchlist.sample.toml"
DEMO_PAPER_BALANCES = "USDT=10000,BTC=0.5,ETH=5"
"""The demo's paper account holds some of what the sample sells, so SELL signals fill too."""

FIRST_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
STABLE_AFTER_S = 30.0
"""A child that ran this long before dying is restarted at once again (its crash count resets)."""


def intentflow_argv(*args: str) -> list[str]:
    """Return the argv of `intentflow ARGS…` run by this interpreter (what compose runs as `intentflow`)."""
    return [sys.executable, "-m", "services", *args]


def service_argv(service: str) -> list[str]:
    """Return the argv of one service, the command compose gives its container."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    return intentflow_argv("run", service)


def restart_delay(crashes: int) -> float:
    """Return how long to wait before the restart that follows the crashes-th crash in a row."""
    if crashes <= 0:
        return 0.0
    return min(FIRST_RESTART_DELAY_S * 2 ** (crashes - 1), MAX_RESTART_DELAY_S)


def dummy_bot_token() -> str:
    """Return a well-formed bot token for the sandbox (random, so a leak into logs is easy to spot)."""
    return f"{secrets.randbelow(9 * 10**8) + 10**8}:AA{secrets.token_urlsafe(26)}"


def describe_exit(code: int | None) -> str:
    """Say how a child ended: 'exit code 1' or 'signal SIGKILL'."""
    if code is None:
        return "still running"
    if code < 0:
        import signal

        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass(frozen=True)
class Endpoints:
    """Where the running system answers (URLs use 127.0.0.1 even when bound to 0.0.0.0)."""

    diagnostics_port: int
    webhook_port: int
    sandbox_url: str | None
    redis_url: str
    database_url: str
    redis_embedded: bool
    database_embedded: bool
    data_dir: Path
    webhook_secret_file: Path | None

    @property
    def diagnostics_url(self) -> str:
        return f"http://127.0.0.1:{self.diagnostics_port}"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}/webhook"

    def as_json(self) -> dict[str, str | None]:
        """Return what up.json records for other tools (no secrets)."""
        return {
            "dashboard_url": self.diagnostics_url + "/",
            "diagnostics_url": self.diagnostics_url,
            "webhook_url": self.webhook_url,
            "telegram_api_url": self.sandbox_url,
        }


def banner(
    ends: Endpoints, *, demo: bool, demo_balances: str | None = None, default_diagnostics_port: int = 8000
) -> str:
    """Return the lines `up` prints once its children are started."""
    verify = "intentflow verify"
    if ends.diagnostics_port != default_diagnostics_port:
        verify += f" --url {ends.diagnostics_url}"
    if ends.webhook_secret_file is not None:
        secret = f"secret in {ends.webhook_secret_file}"
        curl_secret = f"$(cat {ends.webhook_secret_file})"
    else:
        secret, curl_secret = "secret: your WEBHOOK_SECRET", "$WEBHOOK_SECRET"
    lines = [
        f"intentflow is up; data in {ends.data_dir}",
        f"  dashboard         {ends.diagnostics_url}/",
        f"  diagnostics API   {ends.diagnostics_url}/api/diagnostics/recent-signals  ({verify})",
        f"  webhook           POST {ends.webhook_url}  ({secret})",
        f"  telegram sandbox  {ends.sandbox_url}/sandbox/messages"
        if ends.sandbox_url
        else "  telegram          the bot in TELEGRAM_BOT_TOKEN",
        f"  redis             {ends.redis_url}{' (embedded)' if ends.redis_embedded else ''}",
        f"  postgres          {_hide_password(ends.database_url)}"
        + (" (embedded)" if ends.database_embedded else ""),
        "  try               intentflow publish BUY BTC_USDT --price 43210.5   "
        f"(or: curl -X POST {ends.webhook_url} -H 'Content-Type: application/json' "
        f"""-d '{{"symbol":"BTC_USDT","side":"BUY","price":"43210.5","strategy":"manual:curl","secret":"'"{curl_secret}"'"}}')""",
    ]
    if demo:
        lines.append(
            "  demo              replaying the sample candles: signals appear within a minute "
            f"(paper account {demo_balances or 'as configured'})"
        )
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def child_env(
    base: Mapping[str, str],
    *,
    data_dir: Path,
    redis_url: str,
    database_url: str,
    diagnostics_port: int,
    webhook_port: int,
    webhook_secret: str,
    telegram: Mapping[str, str],
    watchlist: Path | None,
    log_format: str = "console",
) -> dict[str, str]:
    """Return the environment every child runs with: the caller's, plus what `up` decided."""
    env = dict(base)
    env.update(
        {
            "INTENTFLOW_DATA_DIR": str(data_dir),
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "DIAGNOSTICS_PORT": str(diagnostics_port),
            "WEBHOOK_PORT": str(webhook_port),
            "WEBHOOK_SECRET": webhook_secret,
            "PYTHONUNBUFFERED": "1",
            "LOG_FORMAT": log_format,
            **telegram,
        }
    )
    if watchlist is not None:
        env["WATCHLIST_FILE"] = str(watchlist)
    return env
