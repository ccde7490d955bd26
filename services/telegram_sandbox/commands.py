"""The sandbox's command: `intentflow telegram-sandbox [--host] [--port] [--enforce-limits]`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

import typer


async def run_until_stopped(stop: asyncio.Event, host: str, port: int, enforce_limits: bool) -> None:
    """Serve the sandbox until stop is set; let a start failure (port in use) propagate."""
    from services.telegram_sandbox.app import serve

    server = asyncio.create_task(serve(host, port, enforce_limits=enforce_limits))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if server.done():
        server.result()
        return
    server.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server


def telegram_sandbox(
    port: Annotated[
        int | None, typer.Option(help="port to listen on (default: TELEGRAM_SANDBOX_PORT, 8081)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="address to bind (default: BIND_HOST, 127.0.0.1)")] = None,
    enforce_limits: Annotated[
        bool,
        typer.Option(
            "--enforce-limits",
            help="answer 429 past Telegram's limits: 1 msg/s per chat, 20/min per group, 30/s overall",
        ),
    ] = False,
) -> None:
    """Run a local stand-in for the Telegram Bot API: shows messages, injects faults on request."""
    from shared.service import run_service
    from shared.settings import RuntimeSettings, TelegramSettings

    bind_port = port if port is not None else TelegramSettings().telegram_sandbox_port
    bind_host = host or RuntimeSettings().bind_host
    try:
        run_service(lambda stop: run_until_stopped(stop, bind_host, bind_port, enforce_limits))
    except OSError as exc:
        typer.secho(
            f"error: cannot listen on {bind_host}:{bind_port} ({exc.strerror or exc}); "
            "choose another with --port or TELEGRAM_SANDBOX_PORT",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Attach `telegram-sandbox` to the intentflow command line."""
    app.command(name="telegram-sandbox")(telegram_sandbox)
