"""Diagnostics routes beside the invariants: streams, token, readiness, 503s, metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from services.diagnostics.app import asgi_app
from services.diagnostics.streams_health import _lag
from shared.embedded import free_port
from shared.redis import create_redis
from shared.streams import StreamNames
from tests.support.plant import HOUR, Plant

TOKEN = "diag-" + uuid.uuid4().hex


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://diag")


@pytest.fixture
async def client(pool: asyncpg.Pool, redis: Redis, names: StreamNames) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(asgi_app(names=names, redis=redis, pool=pool)) as c:
        yield c


@pytest.fixture
async def dead_redis() -> AsyncIterator[Redis]:
    client = create_redis(f"redis://127.0.0.1:{free_port()}")
    yield client
    await client.aclose()


async def test_streams_report_lengths_groups_pending_lag_and_idle(
    client: httpx.AsyncClient, redis: Redis, names: StreamNames, pool: asyncpg.Pool
) -> None:
    ids = [await redis.xadd(names.signals, {"type": "SignalEmitted", "event": "{}"}) for _ in range(5)]
    await redis.xgroup_create(names.signals, "orchestrator", id="0")
    await redis.xgroup_create(names.signals, "notifier", id="$")
    read: Any = await redis.xreadgroup("orchestrator", "orch-1", {names.signals: ">"}, count=3)
    assert len(read[0][1]) == 3
    await redis.xack(names.signals, "orchestrator", ids[0])
    await redis.xadd(names.signals, {"type": "SignalEmitted", "event": "{}"})
    for _ in range(2):
        await redis.xadd(names.dead_letter, {"type": "DeadLetter", "event": "{}"})
    plant = Plant(pool)
    for _ in range(3):
        await plant.message(uuid.uuid4(), ago=HOUR, blocked=True)

    response = await client.get("/api/diagnostics/streams")
    assert response.status_code == 200, response.text
    body = response.json()
    signals = body["streams"]["signals"]
    assert signals["key"] == names.signals and signals["exists"] and signals["length"] == 6
    groups = {g["name"]: g for g in signals["groups"]}
    assert set(groups) == {"orchestrator", "notifier"}
    orch, notif = groups["orchestrator"], groups["notifier"]
    assert (orch["consumers"], orch["pending"], orch["lag"]) == (1, 2, 3)
    assert orch["last_delivered_id"] == ids[2] and orch["oldest_pending_idle_ms"] >= 0
    assert (notif["consumers"], notif["pending"], notif["lag"], notif["oldest_pending_idle_ms"]) == (
        0,
        0,
        1,
        None,
    )
    assert body["streams"]["order-decisions"] == {
        "key": names.order_decisions,
        "exists": False,
        "length": 0,
        "groups": [],
    }
    assert body["dead_letter_length"] == 2 and body["streams"]["dead-letter"]["length"] == 2
    assert body["undelivered_telegram_messages"] == 3


async def test_lag_is_counted_where_redis_does_not_report_it(redis: Redis, names: StreamNames) -> None:
    ids = [await redis.xadd(names.signals, {"n": str(i)}) for i in range(4)]
    assert await _lag(redis, names.signals, {"last-delivered-id": ids[0]}) == 3  # Redis 6.2's shape
    assert (
        await _lag(redis, names.signals, {"last-delivered-id": ids[1], "entries-read": None, "lag": None})
        == 2
    )


async def test_token_guards_every_route_but_healthz(
    pool: asyncpg.Pool, redis: Redis, names: StreamNames
) -> None:
    async with client_for(asgi_app(names=names, redis=redis, pool=pool, token=TOKEN)) as c:
        assert (await c.get("/healthz")).status_code == 200
        for path in (
            "/api/diagnostics/recent-signals",
            "/api/diagnostics/streams",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/docs",
        ):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                response = await c.get(path, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert TOKEN not in response.text
            assert response.headers["www-authenticate"] == "Bearer"
            ok = await c.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200, (path, ok.text)
        assert (await c.get("/api/diagnostics/streams", params={"token": TOKEN})).status_code == 401
        page = await c.get("/")
        assert page.status_code == 401 and "<form" in page.text and "sessionStorage" in page.text
        assert (await c.get("/", params={"token": "nope"})).status_code == 401
        dashboard = await c.get("/", params={"token": TOKEN})
        assert dashboard.status_code == 200 and 'id="verdict"' in dashboard.text


async def test_no_token_means_open_routes(client: httpx.AsyncClient) -> None:
    for path in ("/", "/readyz", "/metrics", "/openapi.json", "/api/diagnostics/streams"):
        assert (await client.get(path)).status_code == 200, path


async def test_readyz_reports_each_check(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    assert {k: v["ok"] for k, v in body["checks"].items()} == {
        "redis": True,
        "postgres": True,
        "schema": True,
    }
    assert body["schema_revision"] == body["expected_revision"]


async def test_redis_down_is_not_ready_and_streams_answer_503(
    pool: asyncpg.Pool, dead_redis: Redis, names: StreamNames
) -> None:
    async with client_for(asgi_app(names=names, redis=dead_redis, pool=pool)) as c:
        ready = await c.get("/readyz")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert not checks["redis"]["ok"] and checks["postgres"]["ok"] and checks["schema"]["ok"]
        streams = await c.get("/api/diagnostics/streams")
        assert streams.status_code == 503 and streams.json()["detail"].startswith("Redis unavailable")
        assert (await c.get("/api/diagnostics/recent-signals")).status_code == 200
        assert (await c.get("/healthz")).status_code == 200
        metrics = await c.get("/metrics")
        assert metrics.status_code == 200
        assert 'intentflow_diagnostics_check_up{check="redis"} 0.0' in metrics.text


async def test_postgres_missing_is_not_ready_and_invariants_answer_503(
    redis: Redis, names: StreamNames
) -> None:
    async with client_for(asgi_app(names=names, redis=redis, pool=None)) as c:
        ready = await c.get("/readyz")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["redis"]["ok"] and not checks["postgres"]["ok"] and not checks["schema"]["ok"]
        for path in ("/api/diagnostics/recent-signals", "/api/diagnostics/streams"):
            response = await c.get(path)
            assert response.status_code == 503
            assert response.json()["detail"].startswith("PostgreSQL unavailable")
            assert response.headers["retry-after"] == "5"


async def test_an_old_schema_says_to_migrate(pool: asyncpg.Pool, redis: Redis, names: StreamNames) -> None:
    await pool.execute("UPDATE alembic_version SET version_num = '0001'")
    async with client_for(asgi_app(names=names, redis=redis, pool=pool)) as c:
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and not ready.json()["checks"]["schema"]["ok"]
        assert ready.json()["schema_revision"] == "0001"
        response = await c.get("/api/diagnostics/recent-signals")
        assert response.status_code == 503 and "intentflow migrate" in response.json()["detail"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_expose_violations_and_stream_lag(
    pool: asyncpg.Pool, redis: Redis, names: StreamNames
) -> None:
    plant = Plant(pool)
    await plant.signal()
    await plant.message(uuid.uuid4(), ago=HOUR)
    await redis.xadd(names.signals, {"n": "1"})
    await redis.xgroup_create(names.signals, "orchestrator", id="0")
    first, second = (asgi_app(names=names, redis=redis, pool=pool) for _ in range(2))
    async with client_for(first) as c1, client_for(second) as c2:
        response = await c1.get("/metrics")
        assert (await c2.get("/metrics")).status_code == 200  # own registry per app: no clash
    assert response.status_code == 200
    got = samples(response.text)
    assert got[("intentflow_diagnostics_violations", (("type", "missing_intent"),))] == 1
    assert got[("intentflow_diagnostics_violations", (("type", "null_decisions"),))] == 0
    assert got[("intentflow_diagnostics_violations", (("type", "failed_without_telegram"),))] == 0
    assert got[("intentflow_diagnostics_pass", ())] == 0
    assert got[("intentflow_diagnostics_signals", (("count", "total_signals"),))] == 2
    assert got[("intentflow_stream_group_lag", (("group", "orchestrator"), ("stream", "signals")))] == 1
    assert got[("intentflow_stream_length", (("stream", "signals"),))] == 1
    assert got[("intentflow_diagnostics_check_up", (("check", "postgres"),))] == 1


async def test_openapi_documents_the_routes(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert {
        "/api/diagnostics/recent-signals",
        "/api/diagnostics/streams",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(doc["paths"])
    params = {
        p["name"]: p["schema"] for p in doc["paths"]["/api/diagnostics/recent-signals"]["get"]["parameters"]
    }
    assert params["hours"]["minimum"] == 1 and params["hours"]["maximum"] == 720
    assert params["limit"]["maximum"] == 5000 and params["grace_seconds"]["maximum"] == 3600
