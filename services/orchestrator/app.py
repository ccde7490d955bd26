"""The orchestrator's composition root: settings in, a running consumer out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import Redis

from services.orchestrator.exchanges.base import Exchange
from services.orchestrator.exchanges.paper import PaperExchange
from services.orchestrator.handlers import OrderPipeline
from shared import streams
from shared.consumer import ConsumerHealth, StreamConsumer, consumer_name
from shared.db import CACHED_INDEX_PLANS, require_schema, wait_for_pool
from shared.events import SignalEmitted
from shared.logging import get_logger
from shared.redis import create_redis
from shared.service import resolve_urls
from shared.settings import Settings, TradingMode, TradingSettings

log = get_logger("intentflow.orchestrator")


def make_exchange(trading: TradingSettings, pool: asyncpg.Pool) -> Exchange | None:
    """Build the venue TRADING_MODE names: none (off), the paper exchange, or ccxt (live)."""
    if trading.trading_mode is TradingMode.OFF:
        return None
    if trading.trading_mode is TradingMode.PAPER:
        return PaperExchange(pool, trading.balances, trading.reject_symbols)
    trading.require_live_credentials()
    from services.orchestrator.exchanges.ccxt_exchange import CcxtExchange

    assert trading.exchange and trading.exchange_api_key and trading.exchange_secret
    return CcxtExchange(
        trading.exchange,
        trading.exchange_api_key.get_secret_value(),
        trading.exchange_secret.get_secret_value(),
        sandbox=trading.exchange_sandbox,
        api_url=trading.exchange_api_url,
    )


async def open_pool(database_url: str, in_flight: int, stop: asyncio.Event | None = None) -> asyncpg.Pool:
    """The orchestrator's pool, retried while PostgreSQL is unreachable.

    A connection for each batch in flight, opened now rather than when the first backlog
    arrives, and one more for the exchange and the live path's decisions. Every statement of
    the orchestrator is written as index probes (the batch read is fenced, the rest go by key),
    so the pool keeps their plans (CACHED_INDEX_PLANS) rather than planning each batch's
    insert anew.
    """
    return await wait_for_pool(
        database_url,
        stop=stop,
        log=log,
        min_size=in_flight + 1,
        max_size=max(5, in_flight + 1),
        plans=CACHED_INDEX_PLANS,
    )


@dataclass
class OrchestratorApp:
    """The orchestrator's parts, opened by run() and closed when it returns."""

    settings: Settings
    exchange: Exchange | None = None
    redis: Redis | None = None
    pool: asyncpg.Pool | None = None
    health: ConsumerHealth = field(default_factory=ConsumerHealth)
    name: str = field(default_factory=lambda: consumer_name("orchestrator"))

    async def run(self, stop: asyncio.Event) -> None:
        """Check the schema, then consume `signals` until stop is set; close everything after."""
        settings = self.settings
        settings.trading.require_live_credentials()
        redis_url, database_url = resolve_urls(settings)
        names = streams.StreamNames(settings.runtime.stream_prefix)
        own_pool = self.pool is None
        pool = self.pool or await open_pool(database_url, settings.consumer.orchestrator_in_flight, stop)
        redis = self.redis or create_redis(redis_url)
        try:
            await require_schema(pool)
            await pool.fetchval("SELECT count(*) FROM order_intents WHERE false")
            log.info("[BOOT] order_intents table OK", mode=settings.trading.trading_mode.value)
            exchange = self.exchange if self.exchange is not None else make_exchange(settings.trading, pool)
            if exchange is not None:
                await exchange.start()
            pipeline = OrderPipeline(
                pool=pool,
                exchange=exchange,
                trading=settings.trading,
                decisions_stream=names.order_decisions,
                maxlen=settings.runtime.stream_maxlen,
            )
            consumer = StreamConsumer(
                redis,
                stream=names.signals,
                group=streams.GROUP_ORCHESTRATOR,
                model=SignalEmitted,
                handler=pipeline.handle,
                dead_letter=names.dead_letter,
                settings=settings.consumer.model_copy(
                    update={"batch_size": settings.consumer.orchestrator_batch_size}
                ),
                name=self.name,
                health=self.health,
                dead_letter_maxlen=settings.runtime.stream_maxlen,
                in_flight=settings.consumer.orchestrator_in_flight,
            )
            log.info("orchestrator consuming", stream=names.signals, consumer=self.name)
            try:
                await consumer.run(stop)
            finally:
                await pipeline.close()
                if exchange is not None and self.exchange is None:
                    await exchange.close()
        finally:
            if self.redis is None:
                await redis.aclose()
            if own_pool:
                await pool.close()
            log.info("orchestrator stopped")


def build_app(
    settings: Settings,
    *,
    exchange: Exchange | None = None,
    redis: Redis | None = None,
    pool: asyncpg.Pool | None = None,
) -> OrchestratorApp:
    """Compose the orchestrator; tests pass their own exchange, Redis client or pool."""
    return OrchestratorApp(settings=settings, exchange=exchange, redis=redis, pool=pool)
