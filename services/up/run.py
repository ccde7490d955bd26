"""The `up` composition root: settings in; servers, sandbox and services running until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from services.up import plan
from services.up.ports import PortTaken, choose_port
from services.up.servers import (
    AlreadyRunning,
    DataDirLock,
    Servers,
    clear_endpoints,
    webhook_secret,
    write_endpoints,
)
from services.up.supervisor import Console, Supervisor, install_stop_handlers
from shared.embedded import EmbeddedServerError
from shared.settings import Settings, SettingsError, load_settings


class UpError(RuntimeError):
    """`up` cannot start; the message says what to change."""


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived while servers were starting."""


@dataclass(frozen=True)
class _Telegram:
    env: dict[str, str]
    sandbox_port: int | None


def _explicit(settings_piece: object, field: str) -> bool:
    return field in getattr(settings_piece, "model_fields_set", set())


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    # Until the supervisor's loop handles signals, SIGTERM must unwind (and stop the servers
    # started so far) just as Ctrl-C does, rather than end the process on the spot.
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _load_settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise UpError(str(exc)) from None


def _telegram(settings: Settings, host: str, say: Console) -> _Telegram:
    telegram = settings.telegram
    if telegram.telegram_bot_token is not None and telegram.telegram_bot_token.get_secret_value().strip():
        if not telegram.telegram_chat_id:
            raise UpError("TELEGRAM_BOT_TOKEN is set but TELEGRAM_CHAT_ID is not: set both, or neither")
        return _Telegram({}, None)
    try:
        choice = choose_port(
            "TELEGRAM_SANDBOX_PORT",
            telegram.telegram_sandbox_port,
            explicit=_explicit(telegram, "telegram_sandbox_port"),
            host=host,
        )
    except PortTaken as exc:
        raise UpError(str(exc)) from None
    if choice.note:
        say.say(choice.note)
    env = {
        "TELEGRAM_BOT_TOKEN": plan.dummy_bot_token(),
        "TELEGRAM_CHAT_ID": telegram.telegram_chat_id or plan.SANDBOX_CHAT_ID,
        "TELEGRAM_API_URL": f"http://127.0.0.1:{choice.port}",
        "TELEGRAM_SANDBOX_PORT": str(choice.port),
    }
    return _Telegram(env, choice.port)


def run_up(*, demo: bool, data_dir: Path | None) -> int:
    """Start everything, supervise until SIGINT/SIGTERM, stop everything; return the exit code."""
    if data_dir is not None:
        os.environ["INTENTFLOW_DATA_DIR"] = str(data_dir)
    settings = _load_settings()
    home = Path(settings.runtime.intentflow_data_dir).expanduser().resolve()
    host = settings.runtime.bind_host
    names = [plan.SANDBOX, *plan.SERVICES]
    console = Console(sys.stdout, names)
    lock = DataDirLock(home)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        raise UpError(str(exc)) from None
    # An empty value (REDIS_URL= in .env) means unset, as everywhere else.
    servers = Servers(home, settings.redis.redis_url or None, settings.database.database_url or None)
    try:
        with _interruptible():
            ports = _choose_ports(settings, host, console)
            telegram = _telegram(settings, host, console)
            try:
                redis_url, database_url = servers.start(console.say)
            except (AlreadyRunning, EmbeddedServerError) as exc:
                raise UpError(str(exc)) from None
            _migrate(database_url, console)
            if demo:
                _forget_replay_throttle(redis_url, settings.runtime.stream_prefix, console)
            secret, secret_file = _webhook_secret(settings, home, console)
        ends = plan.Endpoints(
            diagnostics_port=ports[0],
            webhook_port=ports[1],
            sandbox_url=telegram.env.get("TELEGRAM_API_URL"),
            redis_url=redis_url,
            database_url=database_url,
            redis_embedded=servers.redis is not None,
            database_embedded=servers.postgres is not None,
            data_dir=home,
            webhook_secret_file=secret_file,
        )
        log_format = settings.runtime.log_format if _explicit(settings.runtime, "log_format") else "console"
        env = plan.child_env(
            os.environ,
            data_dir=home,
            redis_url=redis_url,
            database_url=database_url,
            diagnostics_port=ends.diagnostics_port,
            webhook_port=ends.webhook_port,
            webhook_secret=secret,
            telegram=telegram.env,
            watchlist=plan.DEMO_WATCHLIST if demo else None,
            log_format=log_format,
        )
        demo_balances = None
        if demo and not _explicit(settings.trading, "paper_balances"):
            demo_balances = env["PAPER_BALANCES"] = plan.DEMO_PAPER_BALANCES
        if demo and settings.signal_monitor.watchlist_file is not None:
            console.say(
                f"--demo: using the sample watchlist instead of {settings.signal_monitor.watchlist_file}"
            )
        write_endpoints(home, ends.as_json())
        text = plan.banner(ends, demo=demo, demo_balances=demo_balances)
        asyncio.run(_supervise(console, env, telegram, ends, text, host=host))
    except _Interrupted as exc:
        console.say(f"{exc} while starting: stopping what was started")
    finally:
        _ignore_signals()  # a second Ctrl-C must not cut the servers' shutdown short
        clear_endpoints(home)
        try:
            servers.stop()
        except Exception as exc:
            console.say(f"stopping the embedded servers failed: {exc}")
        lock.release()
    console.say("stopped")
    return 0


def _forget_replay_throttle(redis_url: str, prefix: str, console: Console) -> None:
    """Start the demo's replay afresh: its throttle runs on candle time, which restarts with it.

    Without this a second `up --demo` on the same data dir would hold back every replayed
    candle behind the first run's cooldowns. Only the demo does this; a real watchlist's
    throttle survives restarts as it should.
    """
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = list(client.scan_iter(match=f"{prefix}throttle:*", count=1000))
        if keys:
            client.delete(*keys)
            console.say(f"--demo: replaying the sample from its start ({len(keys)} throttle keys reset)")
    finally:
        client.close()


def _choose_ports(settings: Settings, host: str, console: Console) -> tuple[int, int]:
    chosen: list[int] = []
    for variable, piece, field in (
        ("DIAGNOSTICS_PORT", settings.diagnostics, "diagnostics_port"),
        ("WEBHOOK_PORT", settings.webhook, "webhook_port"),
    ):
        try:
            choice = choose_port(variable, getattr(piece, field), explicit=_explicit(piece, field), host=host)
        except PortTaken as exc:
            raise UpError(str(exc)) from None
        if choice.note:
            console.say(choice.note)
        chosen.append(choice.port)
    return chosen[0], chosen[1]


def _migrate(database_url: str, console: Console) -> None:
    from shared.db import migrate

    try:
        revision = migrate(database_url)
    except Exception as exc:
        raise UpError(
            f"migrating {database_url.split('@')[-1]} failed: {type(exc).__name__}: {exc}"
        ) from None
    console.say(f"database schema at revision {revision}")


def _webhook_secret(settings: Settings, home: Path, console: Console) -> tuple[str, Path | None]:
    configured = settings.webhook.webhook_secret
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value(), None
    value, path = webhook_secret(home)
    console.say(f"WEBHOOK_SECRET is unset: the webhook takes the secret kept in {path}")
    return value, path


async def _supervise(
    console: Console,
    env: dict[str, str],
    telegram: _Telegram,
    ends: plan.Endpoints,
    banner: str,
    *,
    host: str,
) -> None:
    supervisor = Supervisor(console)
    install_stop_handlers(supervisor.stop)
    if telegram.sandbox_port is not None:
        supervisor.add(
            plan.SANDBOX,
            plan.intentflow_argv(
                "telegram-sandbox", "--host", host, "--port", str(telegram.sandbox_port), "--enforce-limits"
            ),
            env,
        )
    for service in plan.SERVICES:
        supervisor.add(service, plan.service_argv(service), env)
    console.say(banner)
    ready = asyncio.create_task(_announce_ready(console, ends))
    # Services first (the notifier may still be handing a message to the sandbox), the sandbox last.
    await supervisor.wait_stopped([list(plan.SERVICES), [plan.SANDBOX]])
    ready.cancel()


async def _announce_ready(console: Console, ends: plan.Endpoints, timeout: float = 120.0) -> None:
    """Say once the dashboard answers, or that it has not after timeout."""
    deadline = time.monotonic() + timeout
    url = f"{ends.diagnostics_url}/healthz"
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code == 200:
                    console.say(f"ready: dashboard at {ends.diagnostics_url}/")
                    return
            await asyncio.sleep(0.5)
    console.say(f"diagnostics has not answered {url} within {timeout:.0f}s; see its lines above")
