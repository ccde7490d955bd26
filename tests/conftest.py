"""Fixtures shared by every tier: real servers, a database per test, a key prefix per test.

Servers come from REDIS_URL / DATABASE_URL when set, else testcontainers when a Docker
engine answers, else embedded servers (tests/support/servers.py). The session migrates
one template database; each test that asks for `database_url` gets its own copy of it,
and each test gets its own stream-key prefix, so tests and runs never see each other.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from shared.db import create_pool, migrate
from shared.redis import create_redis
from shared.settings import Settings
from shared.streams import StreamNames
from tests.support import servers
from tests.support.sandbox import sandbox  # noqa: F401  (a fixture every tier may use)

RUN_ID = uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = servers.redis_server_url()
    yield url
    # Every key this run made starts with its prefixes (t<RUN_ID>…): leave a shared Redis as found.
    import redis as sync_redis

    client = sync_redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"t{RUN_ID}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture(scope="session")
def admin_db_url() -> str:
    return servers.postgres_admin_url()


@pytest.fixture(scope="session")
def template_db(admin_db_url: str) -> Iterator[str]:
    name = f"intentflow_tpl_{RUN_ID}"
    url = servers.create_run_database(admin_db_url, name)
    migrate(url)
    yield name
    servers.drop_database(admin_db_url, name)


@pytest.fixture
def database_url(admin_db_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    name = f"intentflow_t_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    url = _clone_database(admin_db_url, name, template_db)
    yield url
    servers.drop_database(admin_db_url, name)


def _clone_database(admin_url: str, name: str, template: str) -> str:
    async def clone() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            await conn.close()

    asyncio.run(clone())
    return servers.database_url(admin_url, name)


@pytest.fixture
def prefix() -> str:
    """A stream-key prefix unique to this test."""
    return f"t{RUN_ID}{uuid.uuid4().hex[:6]}:"


@pytest.fixture
def names(prefix: str) -> StreamNames:
    return StreamNames(prefix)


@pytest.fixture
async def redis(redis_url: str, prefix: str) -> AsyncIterator[Redis]:
    client = create_redis(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, max_size=10)
    yield p
    await p.close()


@pytest.fixture
def service_env(redis_url: str, database_url: str, prefix: str, tmp_path: Any) -> dict[str, str]:
    """The environment a service process of this test runs with (also applied to os.environ)."""
    return {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "INTENTFLOW_STREAM_PREFIX": prefix,
        "INTENTFLOW_DATA_DIR": str(tmp_path / "data"),
        "CLAIM_IDLE_MS": "2000",
        "CONSUMER_BLOCK_MS": "200",
        "LOG_FORMAT": "json",
    }


@pytest.fixture
def make_settings(
    service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> Callable[..., Settings]:
    """Build Settings from this test's environment plus overrides (VAR=value keywords)."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("TELEGRAM_", "EXCHANGE", "PAPER_", "TRADING_", "WEBHOOK_", "DIAGNOSTICS_")):
            monkeypatch.delenv(key)

    def build(**overrides: Any) -> Settings:
        for key, value in {**service_env, **overrides}.items():
            monkeypatch.setenv(key, str(value))
        return Settings()

    return build
