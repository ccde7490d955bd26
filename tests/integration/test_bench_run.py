"""The benchmark's latency window: a CHECKPOINT before it where the role may (a warning where not),
and its batches counted as the scripts Redis ran."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from shared.consumer import Settlement, StreamConsumer
from shared.events import SignalEmitted
from shared.settings import ConsumerSettings
from tests.bench.run import _script_calls, _write_out


async def _last_checkpoint(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        lsn = await conn.fetchval("SELECT checkpoint_lsn - '0/0'::pg_lsn FROM pg_control_checkpoint()")
        return int(lsn)
    finally:
        await conn.close()


async def test_a_latency_window_starts_after_a_checkpoint(database_url: str) -> None:
    before = await _last_checkpoint(database_url)
    assert await _write_out(database_url) is True
    assert await _last_checkpoint(database_url) > before


async def test_a_role_that_may_not_checkpoint_gets_a_warning_not_a_failure(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    role = f"intentflow_nockpt_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'bench'")
    try:
        url = make_url(database_url).set(username=role, password="bench")
        assert await _write_out(url.render_as_string(hide_password=False)) is False
        assert "no CHECKPOINT before the latency window" in capsys.readouterr().err
    finally:
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_each_settled_batch_is_one_script_the_server_counts(redis: Redis, prefix: str) -> None:
    stream, group = f"{prefix}signals", "g"
    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    for n in range(3):
        await redis.xadd(stream, {"n": str(n)})
    consumer = StreamConsumer(
        redis,
        stream=stream,
        group=group,
        model=SignalEmitted,
        handler=_noop,
        dead_letter=f"{prefix}dl",
        settings=ConsumerSettings(),
    )
    before = await _script_calls(redis)
    for _ in range(3):
        response: Any = await redis.xreadgroup(group, consumer.name, {stream: ">"}, count=1)
        entry_id = response[0][1][0][0]
        settled, _ = await consumer.settle([entry_id], Settlement(f"{prefix}out", []), asyncio.Event())
        assert settled
    # Other tests may run scripts on the same server meanwhile: at least ours are counted.
    assert await _script_calls(redis) - before >= 3


async def _noop(batch: object) -> None:
    return None
