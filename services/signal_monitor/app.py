"""The signal monitor's composition root: settings in, the webhook server and the engine out.

The webhook serves from the first second; while Redis is down /readyz answers 503, a
webhook call answers 503 (nothing sent, retry), and the engine holds its signal and
retries. Without WATCHLIST_FILE the engine emits nothing and only webhook and manual
signals flow. A replay that reaches the end of its file ends its entry; the service
keeps serving the webhook until stopped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import FastAPI
from redis.asyncio import Redis

from services.signal_monitor.engine import Engine, close_feed
from services.signal_monitor.feeds import Feed, FeedError, ReplayFeed
from services.signal_monitor.gates import SignalGate, load_configured_watchlist
from services.signal_monitor.watchlist import Watchlist
from services.signal_monitor.webhook import create_webhook_app
from shared.http import AsgiServer
from shared.logging import get_logger
from shared.redis import create_redis
from shared.service import resolve_redis_url
from shared.settings import Settings, SettingsError

log = get_logger("intentflow.signal_monitor")


def build_feed(settings: Settings, watchlist: Watchlist) -> Feed | None:
    """Create the watchlist's feed (None without one), checking a replay has every symbol."""
    if watchlist.feed is None or not watchlist.active():
        return None
    try:
        feed = watchlist.feed.build(
            default_speed=settings.signal_monitor.replay_speed,
            default_poll_seconds=settings.signal_monitor.feed_poll_seconds,
        )
        if isinstance(feed, ReplayFeed):
            for entry in watchlist.active():
                feed.series(entry.symbol)
    except FeedError as exc:
        raise SettingsError(f"WATCHLIST_FILE feed: {exc}") from None
    return feed


@dataclass
class SignalMonitorService:
    """The signal monitor's parts, opened by run() and closed when it returns."""

    settings: Settings
    watchlist: Watchlist
    redis: Redis | None = None
    feed: Feed | None = None
    gate: SignalGate | None = field(default=None, init=False)
    engine: Engine | None = field(default=None, init=False)
    app: FastAPI | None = field(default=None, init=False)
    _server: AsgiServer | None = field(default=None, init=False)

    @property
    def port(self) -> int | None:
        """Return the port the webhook listens on once it does (WEBHOOK_PORT=0 picks one)."""
        return self._server.port if self._server is not None else None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve the webhook and run the engine until stop is set; close everything after."""
        settings = self.settings
        redis = self.redis or create_redis(resolve_redis_url(settings))
        own_feed = self.feed is None
        feed = self.feed if self.feed is not None else build_feed(settings, self.watchlist)
        try:
            self.gate = gate = SignalGate.from_settings(settings, redis, self.watchlist)
            self.engine = engine = Engine(self.watchlist, feed, gate)
            secret = settings.webhook.webhook_secret
            self.app = create_webhook_app(
                gate,
                secret=secret.get_secret_value() if secret else None,
                rate_per_min=settings.webhook.webhook_rate_per_min,
                engine=engine,
            )
            self._log_start(engine)
            engine_task = asyncio.create_task(engine.run(stop), name="engine")
            try:
                await self._serve(self.app, stop)
            finally:
                stop.set()
                await engine_task
        finally:
            if own_feed:
                await close_feed(feed)
            if self.redis is None:
                await redis.aclose()
            log.info("signal monitor stopped")

    def _log_start(self, engine: Engine) -> None:
        settings = self.settings
        path = settings.signal_monitor.watchlist_file
        if path is None:
            log.info("no WATCHLIST_FILE: the engine emits nothing; webhook and manual signals only")
        else:
            log.info("watchlist loaded", path=str(path), entries=len(engine.entries))
        if settings.signal_monitor.signal_kill_switch:
            log.warning("SIGNAL_KILL_SWITCH is on: every signal is held back")
        if settings.webhook.webhook_secret is None:
            log.warning("WEBHOOK_SECRET is unset: the webhook refuses every call (401)")

    async def _serve(self, app: FastAPI, stop: asyncio.Event) -> None:
        settings = self.settings
        server = self._server = AsgiServer(app, settings.runtime.bind_host, settings.webhook.webhook_port)

        def listening(port: int | None) -> None:
            log.info(
                "webhook serving",
                host=settings.runtime.bind_host,
                port=port,
                path="/webhook",
                enabled=settings.webhook.webhook_secret is not None,
            )

        if not await server.serve(stop, on_listening=listening):
            raise SettingsError(
                f"the webhook could not listen on {settings.runtime.bind_host}:{settings.webhook.webhook_port} "
                "(see the error above); set WEBHOOK_PORT to a free port"
            )


def build_app(
    settings: Settings,
    *,
    redis: Redis | None = None,
    feed: Feed | None = None,
    watchlist: Watchlist | None = None,
) -> SignalMonitorService:
    """Compose the signal monitor; tests pass their own Redis client, feed or watchlist."""
    if watchlist is None:
        watchlist = load_configured_watchlist(settings)
    return SignalMonitorService(settings=settings, watchlist=watchlist, redis=redis, feed=feed)
