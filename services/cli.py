"""`intentflow …`: the command line. Each command parses its options and calls one module."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from shared.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="intentflow",
    help="Signal-to-order pipeline: every signal becomes exactly one order intent with a recorded decision.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main() -> None:
    """Signal-to-order pipeline: every signal becomes exactly one order intent with a recorded decision."""
    from shared.logging import configure_logging

    # Commands print their results on stdout; every log line goes to stderr.
    configure_logging("cli", level="WARNING", fmt="console")


class Service(StrEnum):
    SIGNAL_MONITOR = "signal-monitor"
    ORCHESTRATOR = "orchestrator"
    NOTIFIER = "notifier"
    DIAGNOSTICS = "diagnostics"


SERVICE_MODULES = {
    Service.SIGNAL_MONITOR: "services.signal_monitor.app",
    Service.ORCHESTRATOR: "services.orchestrator.app",
    Service.NOTIFIER: "services.notifier.app",
    Service.DIAGNOSTICS: "services.diagnostics.app",
}


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error to stderr and return the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None


def _configure_logging(service: str, settings: Settings) -> None:
    from shared.logging import configure_logging, register_secrets

    secrets = [
        s.get_secret_value() if s is not None else None
        for s in (
            settings.telegram.telegram_bot_token,
            settings.webhook.webhook_secret,
            settings.diagnostics.diagnostics_token,
            settings.trading.exchange_api_key,
            settings.trading.exchange_secret,
        )
    ]
    register_secrets(secrets)
    for url in (settings.redis.redis_url, settings.database.database_url):
        if url and "@" in url and ":" in url.split("@")[0].split("//")[-1]:
            register_secrets([url.split("@")[0].split("//")[-1].split(":", 1)[1]])
    configure_logging(service, level=settings.runtime.log_level, fmt=settings.runtime.log_format)


@app.command()
def run(service: Annotated[Service, typer.Argument(help="which service to run")]) -> None:
    """Run one service in the foreground until SIGTERM or Ctrl-C."""
    from shared.db import SchemaOutOfDate
    from shared.service import run_service

    settings = _settings()
    _configure_logging(service.value, settings)
    module = importlib.import_module(SERVICE_MODULES[service])
    try:
        service_app = module.build_app(settings)
        run_service(service_app.run)
    except (SettingsError, SchemaOutOfDate) as exc:
        raise fail(str(exc), 1) from None


@app.command()
def migrate() -> None:
    """Bring the database schema to the newest version."""
    from shared.db import migrate as run_migrations
    from shared.service import resolve_urls

    settings = _settings()
    try:
        _, database_url = resolve_urls(settings)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    revision = run_migrations(database_url)
    typer.echo(f"schema at revision {revision}")


@app.command()
def publish(
    side: Annotated[str, typer.Argument(help="BUY or SELL")],
    symbol: Annotated[str, typer.Argument(help="e.g. BTC_USDT")],
    price: Annotated[str, typer.Option("--price", help="the signal's price, a decimal > 0")],
    strategy: Annotated[str, typer.Option(help="strategy name, 1-64 chars of A-Za-z0-9:_.-")] = "manual",
    signal_id: Annotated[str | None, typer.Option("--signal-id", help="a UUID; default: a new one")] = None,
) -> None:
    """Validate and publish one signal through the gates; print its signal_id.

    Exit 0 when published (or already published under that id), 2 for invalid input,
    3 when a gate (kill switch, alerts disabled, cooldown, price change) held it back,
    1 when Redis is unreachable.
    """
    from pydantic import ValidationError

    from services.signal_monitor.gates import Result
    from shared.events import SignalEmitted, describe_errors

    data: dict[str, Any] = {
        "side": side.upper(),
        "symbol": symbol,
        "price": price,
        "strategy": strategy,
        "source": "manual",
        "emitted_at": datetime.now(UTC),
    }
    if signal_id is not None:
        data["signal_id"] = signal_id
    try:
        event = SignalEmitted.model_validate(data)
    except ValidationError as exc:
        raise fail(f"invalid signal: {describe_errors(exc)}") from None
    settings = _settings()
    outcome = asyncio.run(_publish(settings, event))
    if outcome.result is Result.HELD:
        typer.secho(
            f"held back ({outcome.gate.code.value}): {outcome.gate.reason}; "
            f"signal {event.signal_id} was not published",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(3)
    typer.echo(str(event.signal_id))
    if outcome.result is Result.DUPLICATE:
        typer.secho("(already published: nothing new was sent)", err=True)


async def _publish(settings: Settings, event: Any) -> Any:
    from redis.exceptions import RedisError

    from services.signal_monitor.gates import PublishUnavailable, SignalGate, load_configured_watchlist
    from shared.redis import create_redis
    from shared.service import resolve_redis_url

    try:
        redis_url = resolve_redis_url(settings)
        watchlist = load_configured_watchlist(settings)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    redis = create_redis(redis_url)
    try:
        return await SignalGate.from_settings(settings, redis, watchlist).submit(event)
    except (RedisError, PublishUnavailable, OSError) as exc:
        raise fail(
            f"cannot reach Redis ({type(exc).__name__}: {exc}); nothing was published. "
            "Check REDIS_URL, or that `intentflow up` runs with this INTENTFLOW_DATA_DIR",
            1,
        ) from None
    finally:
        await redis.aclose()


@app.command()
def tail(
    stream: Annotated[str, typer.Argument(help="signals, order-decisions or dead-letter")] = "signals",
    from_start: Annotated[bool, typer.Option("--from-start", help="print existing entries first")] = False,
    count: Annotated[int | None, typer.Option(help="stop after this many entries")] = None,
) -> None:
    """Follow a stream and print each event as one JSON line."""
    from shared.streams import GROUPS

    if stream not in GROUPS:
        raise fail(f"unknown stream {stream!r}; choose one of {', '.join(GROUPS)}")
    settings = _settings()
    try:
        asyncio.run(_tail(settings, stream, from_start, count))
    except KeyboardInterrupt:
        pass


async def _tail(settings: Settings, stream: str, from_start: bool, count: int | None) -> None:
    from shared.redis import create_redis
    from shared.service import resolve_urls
    from shared.streams import EVENT_FIELD, StreamNames

    try:
        redis_url, _ = resolve_urls(settings)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    key = StreamNames(settings.runtime.stream_prefix).key(stream)
    redis = create_redis(redis_url)
    last = "0" if from_start else "$"
    seen = 0
    try:
        while count is None or seen < count:
            response: Any = await redis.xread({key: last}, block=1000, count=100)
            for _, entries in response or []:
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        event = json.loads(fields.get(EVENT_FIELD, "null"))
                    except ValueError:
                        event = fields
                    typer.echo(json.dumps({"id": entry_id, "stream": stream, "event": event}))
                    sys.stdout.flush()
                    seen += 1
                    if count is not None and seen >= count:
                        return
    finally:
        await redis.aclose()


COMMAND_MODULES = (
    "services.telegram_sandbox.commands",
    "services.diagnostics.commands",
    "services.signal_monitor.commands",
    "services.notifier.commands",
    "services.orchestrator.commands",
    "services.up.commands",
    "services.dead_letter.commands",
)


def _register_commands() -> None:
    """Attach the commands each room keeps beside its code (each module has register(app))."""
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            continue
        module.register(app)


_register_commands()


def main() -> None:
    """Entry point of the `intentflow` console script."""
    app()
