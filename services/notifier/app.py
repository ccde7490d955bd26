"""The notifier's composition root: three consumers (signals, decisions, notices), one Telegram
sender, and the operator's commands (polled by whichever replica holds the lease)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import Redis

from services.notifier.handlers import Notifier
from services.notifier.notices import NoticeDesk
from services.notifier.operator import OperatorBot
from services.notifier.telegram import AiogramSender, MessageSender, TelegramError
from shared import streams
from shared.consumer import ConsumerHealth, StreamConsumer, consumer_name
from shared.db import require_schema, wait_for_pool
from shared.events import OperatorNotice, OrderDecided, SignalEmitted
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
    operator: OperatorBot | None = field(default=None, init=False)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume `signals`, `order-decisions` and `notices` in group notifier until stop is set."""
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
            notifier = Notifier(pool=pool, sender=sender, chat_id=chat_id, stop=stop)
            desk = NoticeDesk(pool=pool, sender=sender, chat_id=chat_id, stop=stop)
            consumers = [
                self._consumer(redis, names, names.signals, SignalEmitted, notifier.on_signals),
                self._consumer(redis, names, names.order_decisions, OrderDecided, notifier.on_decisions),
                self._consumer(redis, names, names.notices, OperatorNotice, desk.on_notices),
            ]
            tasks = [c.run(stop) for c in consumers]
            if isinstance(sender, AiogramSender):
                self.operator = self._operator(pool, redis, names, sender, desk, chat_id)
                tasks.append(self.operator.run(stop))
            log.info("notifier consuming", consumer=self.name)
            await asyncio.gather(*tasks)
        finally:
            if own_sender and isinstance(sender, AiogramSender):
                await sender.close()
            if self.redis is None:
                await redis.aclose()
            if self.pool is None:
                await pool.close()
            log.info("notifier stopped")

    def _operator(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        names: streams.StreamNames,
        sender: AiogramSender,
        desk: NoticeDesk,
        chat_id: str,
    ) -> OperatorBot:
        diagnostics = self.settings.diagnostics
        token = diagnostics.diagnostics_token
        return OperatorBot(
            pool=pool,
            redis=redis,
            names=names,
            source=sender,
            desk=desk,
            chat_id=chat_id,
            name=self.name,
            diagnostics_url=diagnostics.diagnostics_url,
            diagnostics_token=token.get_secret_value() if token else None,
            maxlen=self.settings.runtime.stream_maxlen,
        )

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
