"""The diagnostics HTTP API (CONTRACT §7): invariants, streams, health, metrics, the dashboard."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from services.diagnostics import invariants
from services.diagnostics.invariants import Window
from services.diagnostics.metrics import CONTENT_TYPE, METRICS_WINDOW, DiagnosticsMetrics
from services.diagnostics.models import (
    Check,
    Readiness,
    RecentSignalsReport,
    StreamsReport,
)
from services.diagnostics.streams_health import all_streams
from shared.db import POSTGRES_OUTAGES, current_revision, head_revision
from shared.logging import get_logger
from shared.streams import DEAD_LETTER, StreamNames

log = get_logger("intentflow.diagnostics")

DASHBOARD = Path(__file__).with_name("dashboard.html")
CHECK_TIMEOUT_S = 3.0
OPEN_PATHS = frozenset({"/healthz"})

REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
)
# An outage, or a query cut off by its statement timeout: a 503, not a 500.
POSTGRES_DOWN: tuple[type[BaseException], ...] = (*POSTGRES_OUTAGES, asyncpg.QueryCanceledError)


@dataclass
class Backends:
    """What the routes read from; the service fills `pool` in once PostgreSQL answers."""

    names: StreamNames
    redis: Redis | None = None
    pool: asyncpg.Pool | None = None
    postgres_error: str = "still connecting to PostgreSQL"
    schema_ok: bool = False
    expected_revision: str = field(default_factory=head_revision)


class Unavailable(Exception):
    """A dependency cannot answer; the route answers 503 with this message."""


@asynccontextmanager
async def _postgres(backends: Backends) -> AsyncIterator[asyncpg.Pool]:
    """Yield the pool once PostgreSQL is reachable and migrated, else raise Unavailable."""
    pool = backends.pool
    if pool is None:
        raise Unavailable(f"PostgreSQL unavailable: {backends.postgres_error}")
    try:
        if not backends.schema_ok:
            current = await current_revision(pool)
            if current != backends.expected_revision:
                raise Unavailable(
                    f"database schema is at {current or 'no revision'}, diagnostics needs "
                    f"{backends.expected_revision}: run `intentflow migrate`"
                )
            backends.schema_ok = True
        yield pool
    except POSTGRES_DOWN as exc:
        raise Unavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}") from exc


@asynccontextmanager
async def _redis(backends: Backends) -> AsyncIterator[Redis]:
    """Yield the Redis client, turning an outage into Unavailable."""
    if backends.redis is None:
        raise Unavailable("Redis unavailable: no client configured")
    try:
        yield backends.redis
    except REDIS_DOWN as exc:
        raise Unavailable(f"Redis unavailable: {type(exc).__name__}: {exc}") from exc


async def _check(probe: Callable[[], Awaitable[str]]) -> Check:
    try:
        detail = await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
        return Check(ok=True, detail=detail)
    except Unavailable as exc:
        return Check(ok=False, detail=str(exc))
    except (*REDIS_DOWN, *POSTGRES_DOWN) as exc:
        return Check(ok=False, detail=f"{type(exc).__name__}: {exc}")


async def readiness(backends: Backends) -> Readiness:
    """Check Redis, PostgreSQL and the schema revision, each on its own."""
    revision: list[str | None] = [None]

    async def redis_probe() -> str:
        async with _redis(backends) as redis:
            await redis.ping()
        return "PING answered"

    async def postgres_probe() -> str:
        if backends.pool is None:
            raise Unavailable(backends.postgres_error)
        try:
            await backends.pool.fetchval("SELECT 1")
        except POSTGRES_DOWN as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
        return "SELECT 1 answered"

    async def schema_probe() -> str:
        if backends.pool is None:
            raise Unavailable("unknown until PostgreSQL answers")
        revision[0] = await current_revision(backends.pool)
        if revision[0] != backends.expected_revision:
            raise Unavailable(
                f"schema at {revision[0] or 'no revision'}, needs {backends.expected_revision}: "
                "run `intentflow migrate`"
            )
        return f"schema at {revision[0]}"

    checks = {
        "redis": await _check(redis_probe),
        "postgres": await _check(postgres_probe),
        "schema": await _check(schema_probe),
    }
    return Readiness(
        ready=all(c.ok for c in checks.values()),
        checks=checks,
        schema_revision=revision[0],
        expected_revision=backends.expected_revision,
    )


async def streams_report(backends: Backends) -> StreamsReport:
    """Describe the contract streams and count undelivered Telegram messages."""
    async with _redis(backends) as redis:
        streams = await all_streams(redis, backends.names)
    async with _postgres(backends) as pool:
        undelivered = await invariants.undelivered_messages(pool)
    return StreamsReport(
        streams=streams,
        dead_letter_length=streams[DEAD_LETTER].length,
        undelivered_telegram_messages=undelivered,
    )


def bearer_ok(request: Request, token: str) -> bool:
    """Tell whether a request carries the token (the dashboard page may also take ?token=)."""
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not supplied:
        supplied = request.query_params.get("token", "") if request.url.path == "/" else ""
    return hmac.compare_digest(supplied.strip().encode(), token.encode())


TOKEN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>intentflow diagnostics</title>
<style>body{font:20px system-ui,sans-serif;background:#111;color:#eee;display:grid;place-items:center;height:90vh}
input,button{font-size:20px;padding:.4em}</style></head><body>
<form method="get" action="/"><p>This diagnostics service needs its token (DIAGNOSTICS_TOKEN).</p>
<input type="password" name="token" placeholder="token" autofocus> <button>Open</button></form>
<script>
const t = sessionStorage.getItem("intentflow.diagnostics.token");
if (t && !new URLSearchParams(location.search).has("token")) {
  location.replace("/?token=" + encodeURIComponent(t));
}
</script></body></html>"""


def _validation_message(errors: list[Any]) -> str:
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("query", "body", "path")]
        got = f" (got {error['input']!r})" if "input" in error else ""
        parts.append(f"{'.'.join(loc) or 'request'}: {error.get('msg', 'invalid')}{got}")
    return "; ".join(parts)


def create_api(backends: Backends, *, token: str | None = None) -> FastAPI:
    """Build the FastAPI app over the given backends; a token guards every route but /healthz."""
    api = FastAPI(
        title="intentflow diagnostics",
        version="1",
        description="Proves from the database that every signal got an order decision "
        "and every failure was announced (CONTRACT §7).",
    )
    metrics = DiagnosticsMetrics()
    api.state.backends = backends
    api.state.metrics = metrics
    dashboard_html = DASHBOARD.read_text(encoding="utf-8")

    @api.middleware("http")
    async def require_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if token and request.url.path not in OPEN_PATHS and not bearer_ok(request, token):
            if request.url.path == "/":
                return HTMLResponse(TOKEN_PAGE, status_code=401)
            return JSONResponse(
                {"detail": "missing or wrong token: send Authorization: Bearer <DIAGNOSTICS_TOKEN>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)

    @api.exception_handler(Unavailable)
    async def unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": f"{exc}; GET /readyz shows each check"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return JSONResponse(
            {"message": _validation_message(errors), "detail": jsonable_encoder(errors)}, status_code=422
        )

    @api.get("/api/diagnostics/recent-signals", response_model=RecentSignalsReport, tags=["invariants"])
    async def recent_signals(
        hours: Annotated[
            int, Query(ge=1, le=720, description="window: messages sent within the last hours")
        ] = invariants.DEFAULT_HOURS,
        limit: Annotated[
            int, Query(ge=1, le=5000, description="cut `signals` and `violations` (not counts)")
        ] = invariants.DEFAULT_LIMIT,
        grace_seconds: Annotated[
            int, Query(ge=0, le=3600, description="younger signals are in flight, not violations")
        ] = invariants.DEFAULT_GRACE_SECONDS,
    ) -> RecentSignalsReport:
        """Check the three invariants over the window; list recent signals and violations."""
        async with _postgres(backends) as pool:
            return await invariants.recent_signals(
                pool, Window(hours=hours, limit=limit, grace_seconds=grace_seconds)
            )

    @api.get("/api/diagnostics/streams", response_model=StreamsReport, tags=["streams"])
    async def streams() -> StreamsReport:
        """Report stream lengths, consumer groups (pending, lag, oldest idle) and undelivered messages."""
        return await streams_report(backends)

    @api.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Answer 200 while the process serves requests."""
        return {"status": "ok"}

    @api.get(
        "/readyz",
        response_model=Readiness,
        tags=["health"],
        responses={503: {"model": Readiness, "description": "a check failed"}},
    )
    async def readyz() -> JSONResponse:
        """Report Redis, PostgreSQL and the schema revision; 503 unless all are fine."""
        report = await readiness(backends)
        return JSONResponse(report.model_dump(mode="json"), status_code=200 if report.ready else 503)

    @api.get("/metrics", tags=["health"], response_class=Response)
    async def metrics_route() -> Response:
        """Expose the invariant counts, stream lag and dependency checks to Prometheus."""
        return Response(await metrics.scrape(lambda m: refresh_metrics(m, backends)), media_type=CONTENT_TYPE)

    @api.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(dashboard_html, headers={"Cache-Control": "no-store"})

    return api


async def refresh_metrics(metrics: DiagnosticsMetrics, backends: Backends) -> None:
    """Re-read the invariants and the streams into the gauges; an outage clears what it hides."""
    ready = await readiness(backends)
    metrics.record_checks({name: check.ok for name, check in ready.checks.items()})
    report = None
    if ready.checks["postgres"].ok and ready.checks["schema"].ok:
        try:
            async with _postgres(backends) as pool:
                report = await invariants.recent_signals(pool, METRICS_WINDOW)
        except Unavailable as exc:
            log.warning("metrics: invariants unavailable", error=str(exc))
    metrics.record_report(report)
    streams = None
    if ready.ready:
        try:
            streams = await streams_report(backends)
        except Unavailable as exc:
            log.warning("metrics: streams unavailable", error=str(exc))
    metrics.record_streams(streams)
