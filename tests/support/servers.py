"""Find the Redis and PostgreSQL a test session runs against, starting them when none is given.

Order of preference, for each server: the URL in the environment (`REDIS_URL`,
`DATABASE_URL`); else a testcontainers container when a Docker engine answers; else an
embedded server (shared/embedded.py) in a temporary dir. Whatever this module starts is
stopped, and its dir removed, when the interpreter exits.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.embedded import EmbeddedPostgres, EmbeddedRedis

T = TypeVar("T")

_cleanups: list[Callable[[], None]] = []


def _at_exit(cleanup: Callable[[], None]) -> None:
    if not _cleanups:
        atexit.register(_run_cleanups)
    _cleanups.append(cleanup)


def _run_cleanups() -> None:
    while _cleanups:
        cleanup = _cleanups.pop()
        try:
            cleanup()
        except Exception as exc:  # one failed stop must not leave the others running
            print(f"tests/support/servers.py: cleanup failed: {exc!r}")


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@functools.cache
def docker_available() -> bool:
    """Return True when a Docker engine answers a ping (what testcontainers would use)."""
    try:
        import docker  # testcontainers' own client: same DOCKER_HOST / socket rules

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _temp_data_dir(what: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"intentflow-test-{what}-"))
    _at_exit(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


@functools.cache
def redis_server_url() -> str:
    """Return a Redis URL for this session: REDIS_URL, else a container, else an embedded server."""
    configured = _env("REDIS_URL")
    if configured:
        return configured
    if docker_available():
        from testcontainers.community.redis import RedisContainer

        container = RedisContainer("redis:7-alpine").start()
        _at_exit(container.stop)
        host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
        return f"redis://{host}:{port}/0"
    server = EmbeddedRedis(_temp_data_dir("redis"), appendonly=False)
    url = server.start()
    _at_exit(server.stop)
    return url


@functools.cache
def postgres_admin_url() -> str:
    """Return a URL through which this session may CREATE and DROP its own databases."""
    configured = _env("DATABASE_URL")
    if configured:
        return configured
    if docker_available():
        from testcontainers.community.postgres import PostgresContainer

        container = PostgresContainer(
            "postgres:16-alpine", username="postgres", password="postgres", dbname="test", driver=None
        ).start()
        _at_exit(container.stop)
        return str(container.get_connection_url())
    server = EmbeddedPostgres(_temp_data_dir("postgres"), database="test")
    url = server.start()
    _at_exit(server.stop)
    return url


def database_url(admin_url: str, name: str) -> str:
    """Return admin_url pointed at database name (user, host, port and query kept)."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"database name {name!r} must be lower-case letters, digits, _ (≤63)")
    return name


def _run(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    # Callable from sync fixtures and from inside a running event loop alike.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro_factory()).result()


async def _execute(admin_url: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=30)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_run_database(admin_url: str, name: str) -> str:
    """Create database name (dropping a leftover of the same name) and return its URL."""
    _check_name(name)
    _run(lambda: _execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    _run(lambda: _execute(admin_url, f'CREATE DATABASE "{name}"'))
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database name, ending any connections still open on it."""
    _check_name(name)
    _run(lambda: _execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
