"""The orchestrator room's commands: `intentflow brake on|off|status`."""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from shared.settings import Settings


class BrakeAction(StrEnum):
    ON = "on"
    OFF = "off"
    STATUS = "status"


def brake(
    action: Annotated[
        BrakeAction, typer.Argument(help="on: hold every new order back; off: place again; status")
    ],
    reason: Annotated[
        str | None, typer.Option(help="why (shown in the announcement and the history)")
    ] = None,
    by: Annotated[str | None, typer.Option(help="who switches it (default: $USER@hostname)")] = None,
) -> None:
    """Switch the runtime brake: while on, every new intent is BLOCKED_LIVE_TRADING; each switch is announced.

    Exit 0 when done (or already in that state), 1 when Redis or PostgreSQL cannot be reached.
    """
    from shared.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(asyncio.run(run_brake(settings, action, reason, by)))


async def run_brake(settings: Settings, action: BrakeAction, reason: str | None, by: str | None) -> int:
    """Do `intentflow brake ACTION`: print the outcome, return the exit code."""
    import asyncpg
    from redis.exceptions import RedisError

    from shared import brake as brakes
    from shared.db import create_pool
    from shared.redis import create_redis
    from shared.service import resolve_urls
    from shared.settings import SettingsError
    from shared.streams import StreamNames

    try:
        redis_url, database_url = resolve_urls(settings)
    except SettingsError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        return 2
    try:
        pool = await create_pool(database_url, max_size=2)
    except (OSError, asyncpg.PostgresError) as exc:
        typer.secho(
            f"error: cannot reach PostgreSQL ({type(exc).__name__}: {exc}); the brake was not touched. "
            "Check DATABASE_URL, or that `intentflow up` runs with this INTENTFLOW_DATA_DIR",
            fg=typer.colors.RED,
            err=True,
        )
        return 1
    try:
        if action is BrakeAction.STATUS:
            state = await brakes.brake_state(pool)
            typer.echo(f"brake {state.describe()}")
            for past in (await brakes.brake_history(pool, 5))[1:]:
                typer.echo(f"  before: {past.describe()}")
            return 0
        change = await brakes.set_brake(
            pool, action is BrakeAction.ON, by=by or brakes.default_actor(), reason=reason
        )
        if not change.changed:
            typer.echo(f"brake {change.state.describe()} (already; nothing changed)")
            return 0
        typer.echo(f"brake {change.state.describe()}")
        redis = create_redis(redis_url)
        try:
            await brakes.announce(
                redis,
                StreamNames(settings.runtime.stream_prefix).notices,
                change.state,
                maxlen=settings.runtime.stream_maxlen,
            )
        except (RedisError, OSError) as exc:
            typer.secho(
                f"warning: the brake is switched, but the announcement could not be published "
                f"({type(exc).__name__}: {exc}); Telegram was not told",
                fg=typer.colors.YELLOW,
                err=True,
            )
            return 1
        finally:
            await redis.aclose()
        return 0
    finally:
        await pool.close()


def register(app: typer.Typer) -> None:
    """Attach `intentflow brake` to the command line."""
    app.command(name="brake")(brake)
