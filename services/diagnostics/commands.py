"""The diagnostics room's commands: `intentflow verify`."""

from __future__ import annotations

from typing import Annotated

import typer


def default_url() -> str:
    """Return DIAGNOSTICS_URL, else http://127.0.0.1:${DIAGNOSTICS_PORT}."""
    from shared.settings import DiagnosticsSettings

    settings = DiagnosticsSettings()
    return settings.diagnostics_url or f"http://127.0.0.1:{settings.diagnostics_port}"


def default_token() -> str | None:
    """Return DIAGNOSTICS_TOKEN, if set."""
    from shared.settings import DiagnosticsSettings

    token = DiagnosticsSettings().diagnostics_token
    return token.get_secret_value() if token else None


def verify(
    hours: Annotated[
        int | None,
        typer.Option(min=1, max=720, help="window in hours (default: the service's, 168)"),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="diagnostics base URL (default: DIAGNOSTICS_URL or http://127.0.0.1:$DIAGNOSTICS_PORT)"
        ),
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="bearer token (default: DIAGNOSTICS_TOKEN)", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON answer")] = False,
    grace_seconds: Annotated[
        int | None,
        typer.Option("--grace-seconds", min=0, max=3600, help="in-flight grace (default: the service's, 60)"),
    ] = None,
) -> None:
    """Ask diagnostics whether every signal got a decision; exit 0 pass, 1 violations, 2 unreachable."""
    from services.diagnostics.verify import verify as run_verify

    try:
        base = url or default_url()
        bearer = token if token is not None else default_token()
    except Exception as exc:
        typer.secho(f"error: bad configuration: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    verdict = run_verify(base, hours=hours, grace_seconds=grace_seconds, token=bearer, as_json=as_json)
    if verdict.out:
        typer.echo(verdict.out)
    if verdict.err:
        typer.secho(f"error: {verdict.err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(verdict.code)


def register(app: typer.Typer) -> None:
    """Attach `verify` to the intentflow command line."""
    app.command(name="verify")(verify)
