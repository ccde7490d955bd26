"""Redis or PostgreSQL going away mid-run: the orchestrator waits, loses nothing, catches up.

Each test runs its own embedded server on a fixed port, so the machine's servers are never
stopped."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncpg

from services.orchestrator.app import build_app
from shared.db import create_pool, migrate
from shared.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from shared.redis import create_redis
from shared.streams import GROUP_ORCHESTRATOR, StreamNames
from tests.support.eventually import eventually
from tests.support.pipeline import running, signal, xadd


async def decided_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM order_intents WHERE status <> 'PENDING'"))


async def test_redis_restart_from_its_append_only_file_loses_nothing(
    make_settings, pool, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True, port=free_port())
    url = await asyncio.to_thread(server.start)
    names = StreamNames("outage:")
    app = build_app(make_settings(REDIS_URL=url, INTENTFLOW_STREAM_PREFIX="outage:"))
    client = create_redis(url)
    try:
        async with running(app):
            for _ in range(5):
                await xadd(client, names.signals, signal())
            await eventually(lambda: decided_count(pool), until=lambda n: n == 5)
            await asyncio.to_thread(server.stop)
            await eventually(
                lambda: _connected(app), until=lambda ok: not ok, what="not-ready during the outage"
            )
            await asyncio.to_thread(server.start)
            for _ in range(5):
                await xadd(client, names.signals, signal())
            await eventually(lambda: decided_count(pool), until=lambda n: n == 10, timeout=40)
            assert await _connected(app)
            # Acknowledged right after the commit the count saw, so not necessarily yet.
            await eventually(lambda: _pending(client, names), until=lambda n: n == 0)
    finally:
        await client.aclose()
        await asyncio.to_thread(server.stop)
    assert await pool.fetchval("SELECT count(DISTINCT signal_id) FROM order_intents") == 10


async def _pending(client, names: StreamNames) -> int:
    groups = await client.xinfo_groups(names.signals)
    return int(next(g for g in groups if g["name"] == GROUP_ORCHESTRATOR)["pending"])


async def _connected(app) -> bool:
    return bool(app.health.connected)


async def test_postgres_outage_holds_acknowledgements_until_commit(make_settings, redis, names) -> None:
    # Not under tmp_path: pytest keeps that 0700, and the PostgreSQL user (not root) must reach it.
    data_dir = Path(tempfile.mkdtemp(prefix="intentflow-outage-"))
    server = EmbeddedPostgres(data_dir / "pg", port=free_port())
    url = await asyncio.to_thread(server.start)
    await asyncio.to_thread(migrate, url)
    app = build_app(make_settings(DATABASE_URL=url))
    try:
        async with running(app):
            pool = await create_pool(url)
            for _ in range(5):
                await xadd(redis, names.signals, signal())
            await eventually(lambda: decided_count(pool), until=lambda n: n == 5)
            await pool.close()
            await asyncio.to_thread(server.stop)
            later = [signal() for _ in range(5)]
            for sig in later:
                await xadd(redis, names.signals, sig)
            await eventually(
                lambda: redis.xpending(names.signals, GROUP_ORCHESTRATOR),
                until=lambda p: p["pending"] >= 1,
                what="entries held unacknowledged while PostgreSQL is down",
            )
            await asyncio.to_thread(server.start)
            pool = await create_pool(url)
            await eventually(lambda: decided_count(pool), until=lambda n: n == 10, timeout=60)
            await eventually(
                lambda: redis.xpending(names.signals, GROUP_ORCHESTRATOR), until=lambda p: p["pending"] == 0
            )
            assert await pool.fetchval("SELECT count(DISTINCT signal_id) FROM order_intents") == 10
            assert await redis.xlen(names.dead_letter) == 0
            await pool.close()
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(data_dir, ignore_errors=True)
