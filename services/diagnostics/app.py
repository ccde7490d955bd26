"""The diagnostics service's composition root: settings in, an HTTP server and the watchdog out.

The server answers from the first second: while Redis or PostgreSQL is down, /readyz says
which (503) and the data routes answer 503 with the reason; the pool is opened in the
background and picked up when PostgreSQL answers. A reachable database on an older
schema stops the service at start, as every service does (CONTRACT §4).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import asyncpg
from fastapi import FastAPI
from redis.asyncio import Redis

from services.diagnostics.routes import POSTGRES_DOWN, Backends, create_api
from services.diagnostics.watchdog import Watchdog
from shared.db import SchemaOutOfDate, create_pool, require_schema, wait_for_pool
from shared.http import AsgiServer
from shared.logging import get_logger
from shared.redis import create_redis
from shared.service import resolve_urls
from shared.settings import Settings, SettingsError
from shared.streams import StreamNames

log = get_logger("intentflow.diagnostics")

FIRST_CONNECT_TIMEOUT_S = 5.0


def asgi_app(
    *,
    names: StreamNames,
    redis: Redis | None = None,
    pool: asyncpg.Pool | None = None,
    token: str | None = None,
) -> FastAPI:
    """Build the diagnostics ASGI app over a ready pool and Redis client (tests drive it directly)."""
    backends = Backends(names=names, redis=redis, pool=pool)
    if pool is None:
        backends.postgres_error = "no database pool was given"
    return create_api(backends, token=token)


@dataclass
class DiagnosticsService:
    """The diagnostics service's parts, opened by run() and closed when it returns."""

    settings: Settings
    redis: Redis | None = None
    pool: asyncpg.Pool | None = None
    backends: Backends | None = field(default=None, init=False)
    app: FastAPI | None = field(default=None, init=False)
    watchdog: Watchdog | None = field(default=None, init=False)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve HTTP on BIND_HOST:DIAGNOSTICS_PORT and run the watchdog until stop is set; close everything after."""
        settings = self.settings
        redis_url, database_url = resolve_urls(settings)
        token = settings.diagnostics.diagnostics_token
        redis = self.redis or create_redis(redis_url)
        backends = Backends(names=StreamNames(settings.runtime.stream_prefix), redis=redis)
        self.backends = backends
        own_pool = self.pool is None
        connector: asyncio.Task[None] | None = None
        watching: asyncio.Task[None] | None = None
        try:
            backends.pool = self.pool or await _first_pool(database_url, backends)
            if backends.pool is not None:
                await require_schema(backends.pool)
                backends.schema_ok = True
            else:
                connector = asyncio.create_task(_connect_later(database_url, backends, stop))
            self.app = create_api(backends, token=token.get_secret_value() if token else None)
            self.watchdog = Watchdog(
                pool=lambda: backends.pool if backends.schema_ok else None,
                redis=redis,
                names=backends.names,
                settings=settings.watchdog,
                metrics=self.app.state.metrics,
                maxlen=settings.runtime.stream_maxlen,
            )
            watching = asyncio.create_task(self.watchdog.run(stop))
            await self._serve(self.app, stop)
        finally:
            if watching is not None:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watching
            if connector is not None:
                connector.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await connector
            if self.redis is None:
                await redis.aclose()
            if own_pool and backends.pool is not None:
                await backends.pool.close()
            log.info("diagnostics stopped")

    async def _serve(self, app: FastAPI, stop: asyncio.Event) -> None:
        settings = self.settings
        server = AsgiServer(app, settings.runtime.bind_host, settings.diagnostics.diagnostics_port)

        def listening(port: int | None) -> None:
            log.info(
                "diagnostics serving",
                host=settings.runtime.bind_host,
                port=port,
                auth=bool(settings.diagnostics.diagnostics_token),
            )

        if not await server.serve(stop, on_listening=listening):
            raise SettingsError(
                f"diagnostics could not listen on {settings.runtime.bind_host}:"
                f"{settings.diagnostics.diagnostics_port} (see the error above); set DIAGNOSTICS_PORT to a free port"
            )


async def _first_pool(database_url: str, backends: Backends) -> asyncpg.Pool | None:
    """Open the pool if PostgreSQL answers now; None (and the reason noted) if it does not."""
    try:
        return await asyncio.wait_for(create_pool(database_url), FIRST_CONNECT_TIMEOUT_S)
    except (*POSTGRES_DOWN, asyncpg.PostgresError) as exc:
        backends.postgres_error = f"{type(exc).__name__}: {exc} (retrying)"
        log.warning("postgres unreachable at start, serving not-ready", error=backends.postgres_error)
        return None


async def _connect_later(database_url: str, backends: Backends, stop: asyncio.Event) -> None:
    """Keep trying to open the pool; hand it to the routes once PostgreSQL answers."""
    pool = await wait_for_pool(database_url, stop=stop, log=log)
    backends.pool = pool
    try:
        await require_schema(pool)
        backends.schema_ok = True
        log.info("postgres reachable, diagnostics ready")
    except SchemaOutOfDate as exc:
        log.error("diagnostics not ready", error=str(exc))


def build_app(
    settings: Settings, *, redis: Redis | None = None, pool: asyncpg.Pool | None = None
) -> DiagnosticsService:
    """Compose the diagnostics service; tests pass their own Redis client or pool."""
    return DiagnosticsService(settings=settings, redis=redis, pool=pool)
