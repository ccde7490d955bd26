"""`intentflow up`: embedded servers where none are configured, migrations, the sandbox, the four services."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def up(
    demo: Annotated[
        bool,
        typer.Option("--demo", help="replay the shipped sample market data so signals appear at once"),
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="where embedded servers keep their data (default: INTENTFLOW_DATA_DIR, .intentflow)",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Run the whole system on this machine until Ctrl-C or SIGTERM; restart a service that dies."""
    from services.up.run import UpError, run_up

    try:
        code = run_up(demo=demo, data_dir=data_dir)
    except UpError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Attach `up` to the intentflow command line."""
    app.command(name="up")(up)
