"""What every service process shares: resolving server URLs, signals, the run loop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from shared.settings import Settings, SettingsError


def resolve_urls(settings: Settings) -> tuple[str, str]:
    """Return (redis_url, database_url) from settings, else from a running `intentflow up`."""
    redis_url = settings.redis.redis_url
    database_url = settings.database.database_url
    if redis_url and database_url:
        return redis_url, database_url
    from shared.embedded import read_discovery

    found = read_discovery(settings.runtime.intentflow_data_dir)
    if found is not None:
        redis_url = redis_url or found.redis_url
        database_url = database_url or found.database_url
    if not redis_url:
        raise SettingsError(
            "REDIS_URL is not set and no `intentflow up` is running with "
            f"INTENTFLOW_DATA_DIR={settings.runtime.intentflow_data_dir}"
        )
    if not database_url:
        raise SettingsError(
            "DATABASE_URL is not set and no `intentflow up` is running with "
            f"INTENTFLOW_DATA_DIR={settings.runtime.intentflow_data_dir}"
        )
    return redis_url, database_url


def install_stop_handlers(stop: asyncio.Event) -> None:
    """Set `stop` on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def run_service(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a service's main coroutine under uvloop (when present) until SIGTERM/SIGINT."""

    async def runner() -> None:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        await main(stop)

    try:
        import uvloop

        uvloop.run(runner())
    except ImportError:
        asyncio.run(runner())
