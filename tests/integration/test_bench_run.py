"""The benchmark's write-out before a latency window: CHECKPOINT where the role may, a warning where not."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.bench.run import _write_out


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
