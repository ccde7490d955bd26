"""`intentflow dead-letter list|replay`: what the consumers gave up on, and putting it back."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.dead_letter.store import Letter
    from shared.events import DeadLetter
    from shared.streams import StreamNames

dead_letter_app = typer.Typer(
    name="dead-letter",
    help="Entries the consumers could not process: list them, replay one after a fix.",
    no_args_is_help=True,
)


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _connect() -> tuple[Redis, StreamNames]:
    from shared.redis import create_redis
    from shared.service import resolve_redis_url
    from shared.settings import SettingsError, load_settings
    from shared.streams import StreamNames

    try:
        settings = load_settings()
        url = resolve_redis_url(settings)  # REDIS_URL, else the Redis of a running `intentflow up`
    except SettingsError as exc:
        raise _fail(str(exc), 2) from None
    return create_redis(url), StreamNames(settings.runtime.stream_prefix)


@dead_letter_app.command("list")
def list_command(
    count: Annotated[int, typer.Option("--count", min=1, help="show at most this many, newest first")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Show the newest dead-letter entries: id, stream, group, deliveries, signal_id, reason."""
    from redis.exceptions import RedisError

    from services.dead_letter.store import list_letters

    redis, names = _connect()

    async def go() -> list[Letter]:
        try:
            return await list_letters(redis, names, count)
        finally:
            await redis.aclose()

    try:
        letters = asyncio.run(go())
    except (RedisError, OSError) as exc:
        raise _fail(f"cannot reach Redis ({type(exc).__name__}: {exc}); check REDIS_URL", 1) from None
    for item in letters:
        if as_json:
            typer.echo(json.dumps(item.as_json()))
            continue
        letter = item.letter
        if letter is None:
            typer.echo(f"{item.id}  (unreadable entry) {item.raw}")
            continue
        typer.echo(
            f"{item.id}  {letter.stream} {letter.entry_id}  group={letter.group}  "
            f"deliveries={letter.deliveries}  signal_id={letter.signal_id or '-'}  {letter.error}"
        )
    if not as_json:
        typer.secho(f"{len(letters)} entr{'y' if len(letters) == 1 else 'ies'} shown", err=True)


@dead_letter_app.command("replay")
def replay_command(
    entry_id: Annotated[str, typer.Argument(help="the dead-letter entry id, as `dead-letter list` shows")],
    force: Annotated[
        bool, typer.Option("--force", help="replay even if the event still fails validation")
    ] = False,
) -> None:
    """Re-publish an entry onto its original stream and remove it from dead-letter; print the new id.

    Safe to run after a fix even if part of it was processed before: every consumer is
    idempotent by signal_id.
    """
    from redis.exceptions import RedisError

    from services.dead_letter.store import ReplayRefused, replay

    redis, names = _connect()

    async def go() -> tuple[DeadLetter, str]:
        try:
            return await replay(redis, names, entry_id, force=force)
        finally:
            await redis.aclose()

    try:
        letter, new_id = asyncio.run(go())
    except ReplayRefused as exc:
        raise _fail(str(exc), 1) from None
    except (RedisError, OSError) as exc:
        raise _fail(f"cannot reach Redis ({type(exc).__name__}: {exc}); nothing was replayed", 1) from None
    typer.echo(new_id)
    typer.secho(
        f"replayed {entry_id} onto {letter.stream} as {new_id} (signal_id {letter.signal_id or '-'}); "
        "removed from dead-letter",
        err=True,
    )


def register(app: typer.Typer) -> None:
    """Attach `dead-letter list` and `dead-letter replay` to the intentflow command line."""
    app.add_typer(dead_letter_app)
