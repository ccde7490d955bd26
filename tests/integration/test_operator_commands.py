"""Telegram commands through the sandbox: the notifier long-polls getUpdates over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from services.diagnostics.app import build_app as build_diagnostics
from services.notifier.app import NotifierApp
from services.notifier.app import build_app as build_notifier
from shared.brake import brake_state
from shared.embedded import free_port
from shared.settings import Settings
from tests.support.eventually import eventually
from tests.support.ops import containing, say, texts
from tests.support.pipeline import running
from tests.support.plant import Plant
from tests.support.sandbox import new_token

CHAT = "7171"
STRANGER = "9999"


@pytest.fixture
def settings(make_settings: Callable[..., Settings], sandbox: Any) -> Callable[..., Settings]:
    def build(**extra: Any) -> Settings:
        return make_settings(
            TELEGRAM_BOT_TOKEN=new_token(), TELEGRAM_CHAT_ID=CHAT, TELEGRAM_API_URL=sandbox.url, **extra
        )

    return build


async def polling(*apps: NotifierApp) -> list[bool]:
    return [bool(a.operator and a.operator.polling) for a in apps]


async def test_status_brake_release_and_help_from_the_configured_chat(
    settings: Callable[..., Settings], pool: asyncpg.Pool, sandbox: Any
) -> None:
    plant = Plant(pool)
    await plant.signal("ORDER_PLACED", ago=600)
    await plant.signal("ORDER_FAILED", ago=500, symbol="ETH_USDT")
    notifier = build_notifier(settings())
    async with running(notifier):
        await say(sandbox.url, CHAT, "/status", from_id=11)
        status = await eventually(lambda: containing(sandbox.url, "STATUS", CHAT), what="the /status reply")
        assert "STATUS PASS (last 12 h)" in status[0]
        assert "total signals 2" in status[0] and "placed 1" in status[0] and "failed 1" in status[0]
        assert "missing_intent 0" in status[0] and "stream lag:" in status[0]
        assert "brake: OFF" in status[0] and "source: database" in status[0]

        await say(sandbox.url, CHAT, "/brake@intentflow_bot fat finger on the exchange", from_id=11)
        on = await eventually(lambda: containing(sandbox.url, "BRAKE ON", CHAT), what="BRAKE ON")
        assert "telegram:11" in on[0] and "fat finger on the exchange" in on[0]
        state = await brake_state(pool)
        assert (
            state.enabled
            and state.changed_by == "telegram:11"
            and state.reason == "fat finger on the exchange"
        )

        await say(sandbox.url, CHAT, "/brake", from_id=11)
        await eventually(lambda: containing(sandbox.url, "nothing changed", CHAT), what="the no-op reply")

        await say(sandbox.url, CHAT, "/release", from_id=12)
        off = await eventually(lambda: containing(sandbox.url, "BRAKE OFF", CHAT), what="BRAKE OFF")
        assert "telegram:12" in off[0]
        assert not (await brake_state(pool)).enabled

        await say(sandbox.url, CHAT, "/help")
        helped = await eventually(lambda: containing(sandbox.url, "/release", CHAT), what="the /help reply")
        assert "/status" in helped[0] and "/brake" in helped[0]

    kinds = await pool.fetch("SELECT kind FROM telegram_messages WHERE signal_id IS NULL ORDER BY id")
    assert [r["kind"] for r in kinds] == ["REPLY", "BRAKE", "REPLY", "BRAKE", "REPLY"]
    history = await pool.fetch("SELECT enabled, changed_by FROM brake_events ORDER BY id")
    assert [(r["enabled"], r["changed_by"]) for r in history] == [
        (True, "telegram:11"),
        (False, "telegram:12"),
    ]


async def test_commands_from_another_chat_change_nothing(
    settings: Callable[..., Settings], pool: asyncpg.Pool, sandbox: Any, capsys: Any, caplog: Any
) -> None:
    async with running(build_notifier(settings())):
        for text in ("/brake", "/status", "/help"):
            await say(sandbox.url, STRANGER, text, from_id=66)
        # Updates are handled in order: once the configured chat's /status is answered,
        # the stranger's commands have been seen (and ignored).
        await say(sandbox.url, CHAT, "/status")
        reply = await eventually(lambda: containing(sandbox.url, "STATUS", CHAT), what="the /status reply")
        assert "brake: OFF" in reply[0]
    assert await texts(sandbox.url, STRANGER) == []
    assert not (await brake_state(pool)).enabled
    assert await pool.fetchval("SELECT count(*) FROM brake_events") == 0
    assert await pool.fetchval("SELECT count(*) FROM control_flags") == 0
    out = capsys.readouterr()
    logged = "\n".join([caplog.text, out.out, out.err])
    ignored = [line for line in logged.splitlines() if "not TELEGRAM_CHAT_ID" in line]
    assert ignored and all(STRANGER in line for line in ignored)


async def test_only_one_of_two_notifiers_polls_and_a_command_is_answered_once(
    settings: Callable[..., Settings], pool: asyncpg.Pool, sandbox: Any
) -> None:
    first, second = build_notifier(settings()), build_notifier(settings())
    async with running(first), running(second):
        await eventually(
            lambda: polling(first, second), until=lambda p: sorted(p) == [False, True], what="one poller"
        )
        await say(sandbox.url, CHAT, "/status")
        await eventually(lambda: containing(sandbox.url, "STATUS", CHAT), what="the reply")
        await say(sandbox.url, CHAT, "/help")
        await eventually(lambda: containing(sandbox.url, "/release", CHAT), what="the second reply")
        assert sorted(await polling(first, second)) == [False, True]
    assert len(await containing(sandbox.url, "STATUS", CHAT)) == 1


async def test_a_stopped_poller_hands_over_to_the_other_notifier(
    settings: Callable[..., Settings], sandbox: Any
) -> None:
    first, second = build_notifier(settings()), build_notifier(settings())
    stop_first = asyncio.Event()
    first_task = asyncio.create_task(first.run(stop_first))
    try:
        await eventually(lambda: polling(first), until=lambda p: p == [True], what="the first poller")
        async with running(second):
            await eventually(lambda: polling(second), until=lambda p: p == [False], what="the second waiting")
            stop_first.set()
            await asyncio.wait_for(first_task, 15)
            await eventually(
                lambda: polling(second), until=lambda p: p == [True], what="the second took over"
            )
            await say(sandbox.url, CHAT, "/help")
            await eventually(lambda: containing(sandbox.url, "/release", CHAT), what="the reply")
    finally:
        stop_first.set()
        await asyncio.wait_for(first_task, 15)


async def test_status_counts_come_from_diagnostics_when_its_url_is_set(
    settings: Callable[..., Settings], pool: asyncpg.Pool, sandbox: Any
) -> None:
    await Plant(pool).message(None, ago=600, decision=(None, None))
    port = free_port()
    cfg = settings(DIAGNOSTICS_PORT=port, DIAGNOSTICS_URL=f"http://127.0.0.1:{port}")
    diagnostics = build_diagnostics(cfg)
    async with running(diagnostics), running(build_notifier(cfg)):
        await eventually(lambda: _ready(f"http://127.0.0.1:{port}"), what="diagnostics ready")
        await say(sandbox.url, CHAT, "/status")
        reply = await eventually(lambda: containing(sandbox.url, "STATUS", CHAT), what="the /status reply")
    assert "STATUS FAIL" in reply[0] and "missing_intent 1" in reply[0]
    assert f"source: diagnostics http://127.0.0.1:{port}" in reply[0]


async def _ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(url + "/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def test_redis_marks_each_update_handled_once(
    settings: Callable[..., Settings], redis: Redis, sandbox: Any
) -> None:
    notifier = build_notifier(settings())
    async with running(notifier):
        await say(sandbox.url, CHAT, "/help")
        await eventually(lambda: containing(sandbox.url, "/release", CHAT), what="the reply")
        assert notifier.operator is not None
        marks = [
            k
            async for k in redis.scan_iter(
                match=f"{notifier.operator.names.prefix}intentflow:telegram-update:*"
            )
        ]
        assert len(marks) == 1
