"""What every service process shares: resolving server URLs, signals, the run loop."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Awaitable, Callable

from shared.settings import Settings, SettingsError


def resolve_urls(settings: Settings) -> tuple[str, str]:
    """Return (redis_url, database_url) from settings, else from a running `intentflow up`."""
    return resolve_redis_url(settings), _resolve(settings, "DATABASE_URL", settings.database.database_url)


def resolve_redis_url(settings: Settings) -> str:
    """Return REDIS_URL, else the Redis of a running `intentflow up` (for what needs no database)."""
    return _resolve(settings, "REDIS_URL", settings.redis.redis_url)


def _resolve(settings: Settings, variable: str, configured: str | None) -> str:
    if configured:
        return configured
    from shared.embedded import read_discovery

    data_dir = settings.runtime.intentflow_data_dir
    found = read_discovery(data_dir)
    if found is None:
        raise SettingsError(
            f"{variable} is not set and no `intentflow up` is running with INTENTFLOW_DATA_DIR={data_dir}"
        )
    return found.redis_url if variable == "REDIS_URL" else found.database_url


def install_stop_handlers(stop: asyncio.Event) -> None:
    """Set `stop` on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


# The cyclic garbage collector's thresholds in a service process. Python's default (700, 10, 10)
# walks the young objects after every 700 net allocations: a batch's objects (events, plans,
# rows: ~100 per signal, alive for the batch's few milliseconds) were walked several times
# and promoted before they died, ~10 % of the orchestrator's CPU (perf). At 20,000 most die
# first; what is walked is what lives. Garbage without cycles is freed at once, whatever the
# thresholds; only cyclic garbage waits longer (the bench's RSS did not move: 82 MB for the
# orchestrator, 112 MB for the notifier, both flat).
GC_THRESHOLDS = (20_000, 20, 20)


def run_service(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a service's main coroutine under uvloop (when present) until SIGTERM/SIGINT."""
    gc.set_threshold(*GC_THRESHOLDS)
    # What exists by now (modules, classes, schemas: ~100,000 objects that live as long as the
    # process) is moved out of the collector's reach. A full collection walked them all: 50-75 ms
    # with the loop stopped, once every half minute or so under load, a stall every signal in
    # flight then waited out. Only what is made later is walked.
    gc.collect()
    gc.freeze()

    async def runner() -> None:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        await main(stop)

    try:
        import uvloop

        uvloop.run(runner())
    except ImportError:
        asyncio.run(runner())
