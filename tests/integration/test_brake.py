"""The runtime brake through `intentflow brake`: the orchestrator holds orders back, the notifier announces."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from services.notifier.app import build_app as build_notifier
from services.orchestrator.app import build_app as build_orchestrator
from services.orchestrator.commands import BrakeAction, run_brake
from shared.brake import brake_state
from shared.settings import Settings
from shared.streams import StreamNames
from tests.support.eventually import eventually
from tests.support.ops import containing
from tests.support.pipeline import events, running, signal, xadd
from tests.support.sandbox import new_token

CHAT = "6161"


@pytest.fixture
def settings(make_settings: Callable[..., Settings], sandbox: Any) -> Settings:
    return make_settings(TELEGRAM_BOT_TOKEN=new_token(), TELEGRAM_CHAT_ID=CHAT, TELEGRAM_API_URL=sandbox.url)


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def brake_cli(capsys: Any) -> Callable[..., Awaitable[Outcome]]:
    """Run what `intentflow brake ACTION [--reason R] [--by B]` runs, in this event loop.

    (The typer layer, and the process, are covered by tests/e2e/test_watchdog_processes.py;
    invoking the CLI in-process would reconfigure logging for every later test.)
    """

    async def invoke(action: str, *, reason: str | None = None, by: str | None = None) -> Outcome:
        capsys.readouterr()
        code = await run_brake(Settings(), BrakeAction(action), reason, by)
        out = capsys.readouterr()
        return Outcome(code, out.out, out.err)

    return invoke


async def decision_of(pool: asyncpg.Pool, signal_id: Any) -> Any:
    return await pool.fetchrow(
        "SELECT status, reason_code, reason_message FROM order_intents WHERE signal_id = $1", signal_id
    )


async def test_brake_on_blocks_orders_off_places_them_and_both_switches_are_announced(
    brake_cli: Any, settings: Settings, pool: asyncpg.Pool, redis: Redis, names: StreamNames, sandbox: Any
) -> None:
    async with running(build_orchestrator(settings)), running(build_notifier(settings)):
        on = await brake_cli("on", reason="exchange maintenance", by="alice")
        assert on.exit_code == 0, on.stderr
        assert "ON since" in on.stdout and "alice" in on.stdout

        held = signal(symbol="BTC_USDT")
        await xadd(redis, names.signals, held)
        row = await eventually(lambda: decision_of(pool, held.signal_id), what="the held signal's intent")
        assert row["status"] == "BLOCKED_LIVE_TRADING"
        assert row["reason_code"] == "ORDER_BLOCKED_LIVE_TRADING"
        assert "brake is on" in row["reason_message"] and "alice" in row["reason_message"]

        status = await brake_cli("status")
        assert (
            status.exit_code == 0 and "brake ON" in status.stdout and "exchange maintenance" in status.stdout
        )

        off = await brake_cli("off", by="bob")
        assert off.exit_code == 0, off.stderr
        placed = signal(symbol="BTC_USDT")
        await xadd(redis, names.signals, placed)
        row = await eventually(lambda: decision_of(pool, placed.signal_id), what="the next signal's intent")
        assert row["status"] == "ORDER_PLACED"

        brake_on = await eventually(lambda: containing(sandbox.url, "BRAKE ON"), what="BRAKE ON announced")
        assert "alice" in brake_on[0] and "exchange maintenance" in brake_on[0]
        brake_off = await eventually(lambda: containing(sandbox.url, "BRAKE OFF"), what="BRAKE OFF announced")
        assert "bob" in brake_off[0]
        announced = await eventually(
            lambda: pool.fetch(
                "SELECT kind, message FROM telegram_messages WHERE kind = 'BRAKE' ORDER BY id"
            ),
            until=lambda rows: len(rows) == 2,
            what="both announcements recorded",
        )
        assert "BRAKE ON" in announced[0]["message"] and "BRAKE OFF" in announced[1]["message"]

    history = await pool.fetch("SELECT enabled, changed_by, reason FROM brake_events ORDER BY id")
    assert [(r["enabled"], r["changed_by"], r["reason"]) for r in history] == [
        (True, "alice", "exchange maintenance"),
        (False, "bob", None),
    ]


async def test_switching_to_the_current_state_changes_and_announces_nothing(
    brake_cli: Any, settings: Settings, pool: asyncpg.Pool, redis: Redis, names: StreamNames
) -> None:
    assert (await brake_cli("on", by="carol")).exit_code == 0
    again = await brake_cli("on", by="dave")
    assert again.exit_code == 0 and "already" in again.stdout
    state = await brake_state(pool)
    assert state.enabled and state.changed_by == "carol"
    assert await pool.fetchval("SELECT count(*) FROM brake_events") == 1
    notices = await events(redis, names.notices)
    assert [(n["kind"], n["actor"]) for n in notices] == [("BRAKE_ON", "carol")]


async def test_the_default_actor_is_user_at_host_and_status_says_never_switched(
    brake_cli: Any, settings: Settings, pool: asyncpg.Pool
) -> None:
    first = await brake_cli("status")
    assert first.exit_code == 0 and "OFF (never switched)" in first.stdout
    assert (await brake_cli("on")).exit_code == 0
    state = await brake_state(pool)
    assert state.changed_by is not None and "@" in state.changed_by


async def test_postgres_unreachable_is_a_clear_error_exit_1(
    brake_cli: Any, make_settings: Callable[..., Settings]
) -> None:
    make_settings(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    result = await brake_cli("on")
    assert result.exit_code == 1
    assert "cannot reach PostgreSQL" in result.stderr and "not touched" in result.stderr
