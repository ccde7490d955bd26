"""The notifier's composition root: two consumers (signals, decisions) and one Telegram sender."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import Redis

from services.notifier.handlers import Notifier
from services.notifier.telegram import AiogramSender, MessageSender, TelegramError
from shared import streams
from shared.consumer import ConsumerHealth, StreamConsumer, consumer_name
from shared.db import require_schema, wait_for_pool
from shared.events import OrderDecided, SignalEmitted
from shared.logging import get_logger
from shared.redis import create_redis
from shared.service import resolve_urls
from shared.settings import Settings

log = get_logger("intentflow.notifier")


@dataclass
class NotifierApp:
    """The notifier's parts, opened by run() and closed when it returns."""

    settings: Settings
    sender: MessageSender | None = None
    redis: Redis | None = None
    pool: asyncpg.Pool | None = None
    health: dict[str, ConsumerHealth] = field(default_factory=dict)
    name: str = field(default_factory=lambda: consumer_name("notifier"))

    async def run(self, stop: asyncio.Event) -> None:
        """Consume `signals` and `order-decisions` in group notifier until stop is set."""
        settings = self.settings
        _, chat_id = settings.telegram.require()
        redis_url, database_url = resolve_urls(settings)
        names = streams.StreamNames(settings.runtime.stream_prefix)
        own_sender = self.sender is None
        sender = self.sender or AiogramSender.from_settings(settings.telegram, stop=stop)
        pool = self.pool or await wait_for_pool(database_url, stop=stop, log=log)
        redis = self.redis or create_redis(redis_url)
        try:
            await require_schema(pool)
            if isinstance(sender, AiogramSender):
                try:
                    log.info("telegram bot ready", bot=await sender.check(), chat_id=chat_id)
                except TelegramError as exc:
                    log.warning("telegram not reachable yet; messages wait and retry", error=str(exc))
            notifier = Notifier(pool=pool, sender=sender, chat_id=chat_id)
            consumers = [
                self._consumer(redis, names, names.signals, SignalEmitted, notifier.on_signals),
                self._consumer(redis, names, names.order_decisions, OrderDecided, notifier.on_decisions),
            ]
            log.info("notifier consuming", consumer=self.name)
            await asyncio.gather(*(c.run(stop) for c in consumers))
        finally:
            if own_sender and isinstance(sender, AiogramSender):
                await sender.close()
            if self.redis is None:
                await redis.aclose()
            if self.pool is None:
                await pool.close()
            log.info("notifier stopped")

    def _consumer(
        self, redis: Redis, names: streams.StreamNames, stream: str, model: type, handler: object
    ) -> StreamConsumer:
        health = self.health.setdefault(stream, ConsumerHealth())
        return StreamConsumer(
            redis,
            stream=stream,
            group=streams.GROUP_NOTIFIER,
            model=model,
            handler=handler,  # type: ignore[arg-type]
            dead_letter=names.dead_letter,
            settings=self.settings.consumer,
            name=self.name,
            health=health,
            dead_letter_maxlen=self.settings.runtime.stream_maxlen,
        )


def build_app(
    settings: Settings,
    *,
    sender: MessageSender | None = None,
    redis: Redis | None = None,
    pool: asyncpg.Pool | None = None,
) -> NotifierApp:
    """Compose the notifier; tests pass their own sender, Redis client or pool."""
    return NotifierApp(settings=settings, sender=sender, redis=redis, pool=pool)
