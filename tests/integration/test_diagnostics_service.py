"""The diagnostics service as `intentflow run diagnostics` runs it: a real uvicorn server on a free port."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from services.diagnostics.app import build_app
from services.diagnostics.models import RecentSignalsReport
from shared.db import SchemaOutOfDate
from shared.embedded import free_port
from shared.settings import Settings, SettingsError
from tests.support import servers
from tests.support.eventually import eventually, wait_sync
from tests.support.pipeline import running
from tests.support.plant import HOUR, Plant


async def get(url: str) -> int | None:
    """The status of GET url, or None while nothing answers."""
    try:
        async with httpx.AsyncClient(timeout=5) as c:
            return (await c.get(url)).status_code
    except httpx.TransportError:
        return None


async def test_serves_not_ready_until_postgres_exists_then_ready(
    make_settings: Callable[..., Settings], admin_db_url: str, template_db: str
) -> None:
    name = f"intentflow_late_{uuid.uuid4().hex[:10]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings_ = make_settings(DATABASE_URL=servers.database_url(admin_db_url, name), DIAGNOSTICS_PORT=port)
    try:
        async with running(build_app(settings_)):
            await eventually(lambda: get(base + "/healthz"), until=lambda s: s == 200, what="/healthz")
            async with httpx.AsyncClient(base_url=base) as c:
                ready = await c.get("/readyz")
                assert ready.status_code == 503
                assert not ready.json()["checks"]["postgres"]["ok"]
                assert ready.json()["checks"]["redis"]["ok"]
                signals = await c.get("/api/diagnostics/recent-signals")
                assert signals.status_code == 503
                assert "PostgreSQL unavailable" in signals.json()["detail"]
                conn = await asyncpg.connect(admin_db_url)
                try:
                    await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
                finally:
                    await conn.close()
                await eventually(lambda: get(base + "/readyz"), until=lambda s: s == 200, what="/readyz 200")
                assert (await c.get("/api/diagnostics/recent-signals")).status_code == 200
        assert await get(base + "/healthz") is None  # stopped: the port is closed
    finally:
        servers.drop_database(admin_db_url, name)


async def test_unreachable_postgres_serves_503_and_stops_on_request(
    make_settings: Callable[..., Settings],
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings_ = make_settings(
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", DIAGNOSTICS_PORT=port
    )
    async with running(build_app(settings_)) as task:
        await eventually(lambda: get(base + "/readyz"), until=lambda s: s == 503, what="/readyz 503")
        assert await get(base + "/api/diagnostics/streams") == 503
    assert task.done() and task.exception() is None


async def test_an_old_schema_stops_the_service_at_start(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    await pool.execute("UPDATE alembic_version SET version_num = '0001'")
    settings_ = make_settings(DIAGNOSTICS_PORT=free_port())
    with pytest.raises(SchemaOutOfDate, match="intentflow migrate"):
        await asyncio.wait_for(build_app(settings_).run(asyncio.Event()), 30)


async def test_a_taken_port_stops_the_service_with_an_error_naming_diagnostics_port(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings_ = make_settings(DIAGNOSTICS_PORT=taken.getsockname()[1])
        with pytest.raises(SettingsError, match="DIAGNOSTICS_PORT"):
            await asyncio.wait_for(build_app(settings_).run(asyncio.Event()), 30)


@contextmanager
def served(settings_: Settings) -> Iterator[str]:
    """Run the service in a thread with its own event loop (so blocking clients may call it)."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        started.set()
        await build_app(settings_).run(box["stop"])

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=target, name="diagnostics", daemon=True)
    thread.start()
    started.wait(30)
    base = f"http://127.0.0.1:{settings_.diagnostics.diagnostics_port}"

    def healthy() -> bool:
        if "error" in box:
            raise AssertionError(f"diagnostics failed: {box['error']!r}")
        try:
            return requests.get(base + "/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_sync(healthy, what="diagnostics answering /healthz")
    try:
        yield base
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(20)
        assert not thread.is_alive(), "diagnostics did not stop"
        if "error" in box:
            raise box["error"]


async def _plant_some(pool: asyncpg.Pool) -> None:
    plant = Plant(pool)
    for status in ("ORDER_PLACED", "ORDER_FAILED", "DEDUP_SKIPPED", "BLOCKED_LIVE_TRADING"):
        await plant.signal(status)
    await plant.message(uuid.uuid4(), ago=HOUR)
    await plant.intent(status="ORDER_FAILED", decided_ago=2 * HOUR)


def test_fuzzing_the_openapi_document_finds_no_5xx(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    async def plant() -> None:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        try:
            await _plant_some(pool)
        finally:
            await pool.close()

    asyncio.run(plant())
    settings_ = make_settings(DIAGNOSTICS_PORT=free_port())
    with served(settings_) as base, requests.Session() as session:
        schema = schemathesis.openapi.from_url(base + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        assert {op.path for op in operations} >= {"/api/diagnostics/recent-signals", "/readyz"}
        calls, statuses = 0, set()
        for operation in operations:
            modes = [schemathesis.GenerationMode.POSITIVE]
            if operation.query:
                modes.append(schemathesis.GenerationMode.NEGATIVE)
            for mode in modes:

                @settings(
                    max_examples=120,
                    derandomize=True,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def call(case: schemathesis.Case) -> None:
                    nonlocal calls
                    calls += 1
                    response = case.call(base_url=base, session=session)
                    statuses.add(response.status_code)
                    where = f"{case.method} {case.path} query={case.query!r}"
                    assert response.status_code < 500, (
                        f"{where} -> {response.status_code}: {response.text[:300]}"
                    )
                    if case.path == "/api/diagnostics/recent-signals" and response.status_code == 200:
                        RecentSignalsReport.model_validate(response.json())
                    if response.status_code == 422:
                        assert response.json()["message"], where

                call()
        assert calls >= 200 and {200, 422} <= statuses, (calls, statuses)
