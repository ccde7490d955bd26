"""The Telegram sandbox as aiogram sees it: real aiogram Bot, real HTTP on a free local port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)

from services.telegram_sandbox.app import RunningSandbox, start_sandbox
from services.telegram_sandbox.limits import SandboxLimits
from tests.support.eventually import eventually
from tests.support.sandbox import new_token


@pytest.fixture
async def bot(sandbox: RunningSandbox) -> AsyncIterator[Bot]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(sandbox.url))
    async with Bot(new_token(), session=session, default=DefaultBotProperties(parse_mode="HTML")) as b:
        yield b


async def sandbox_call(sandbox: RunningSandbox, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, sandbox.url + path, json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_send_message_answers_a_message_aiogram_parses(sandbox, bot):
    first = await bot.send_message(4242, "<b>BUY SIGNAL</b> BTC_USDT &lt;x&gt;")
    second = await bot.send_message(4242, "two")
    group = await bot.send_message(-4242, "group")
    supergroup = await bot.send_message(-1001234567890, "super")

    assert (first.message_id, second.message_id, group.message_id) == (1, 2, 1)
    assert first.chat.id == 4242 and first.chat.type == "private"
    assert group.chat.type == "group" and supergroup.chat.type == "supergroup"
    assert first.text == "BUY SIGNAL BTC_USDT <x>"
    assert first.date.year >= 2024

    kept = await sandbox_call(sandbox, "GET", "/sandbox/messages?chat_id=4242")
    assert [m["text"] for m in kept] == ["<b>BUY SIGNAL</b> BTC_USDT &lt;x&gt;", "two"]
    assert kept[0]["parse_mode"] == "HTML" and kept[0]["message_id"] == 1
    everything = await sandbox_call(sandbox, "GET", "/sandbox/messages")
    assert len(everything) == 4

    await sandbox_call(sandbox, "DELETE", "/sandbox/messages")
    assert await sandbox_call(sandbox, "GET", "/sandbox/messages") == []


async def test_get_me_and_housekeeping_methods(bot):
    me = await bot.get_me()
    assert me.is_bot and me.id == bot.id
    assert await bot.delete_webhook() is True
    assert await bot.set_my_commands([]) is True


async def test_invalid_html_is_refused_like_telegram_does(bot):
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(1, "price <script>alert(1)</script>")
    with pytest.raises(TelegramBadRequest, match="too long"):
        await bot.send_message(1, "x" * 4097)
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message("@nobody", "hi")


async def test_faults_are_served_in_order_with_the_shape_aiogram_expects(sandbox, bot):
    for fault in (
        {"kind": "429", "count": 1, "retry_after": 3},
        {"kind": "500"},
        {"kind": "502"},
        {"kind": "403"},
    ):
        await sandbox_call(sandbox, "POST", "/sandbox/faults", fault)

    with pytest.raises(TelegramRetryAfter) as too_many:
        await bot.send_message(1, "a")
    assert too_many.value.retry_after == 3
    with pytest.raises(TelegramServerError):
        await bot.send_message(1, "b")
    with pytest.raises(ClientDecodeError):
        await bot.send_message(1, "c")
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(1, "d")
    await bot.send_message(1, "e")

    assert [m["text"] for m in await sandbox_call(sandbox, "GET", "/sandbox/messages")] == ["e"]
    stats = await sandbox_call(sandbox, "GET", "/sandbox/stats")
    assert stats["faults"] == {"429": 1, "500": 1, "502": 1, "403": 1}
    assert stats["fault_429"] == 1 and stats["total_429"] == 1 and stats["limit_429"] == 0
    assert stats["received"] == 1 and stats["send_requests"] == 5


async def test_a_fault_for_one_chat_leaves_other_chats_alone(sandbox, bot):
    await sandbox_call(sandbox, "POST", "/sandbox/faults", {"kind": "403", "count": -1, "chat_id": 7})
    await bot.send_message(8, "fine")
    for _ in range(2):
        with pytest.raises(TelegramForbiddenError):
            await bot.send_message(7, "blocked")
    assert len(await sandbox_call(sandbox, "GET", "/sandbox/faults")) == 1
    await sandbox_call(sandbox, "DELETE", "/sandbox/faults")
    await bot.send_message(7, "unblocked")
    texts = [m["text"] for m in await sandbox_call(sandbox, "GET", "/sandbox/messages")]
    assert texts == ["fine", "unblocked"]


async def test_a_slow_answer_is_slow(sandbox, bot):
    await sandbox_call(sandbox, "POST", "/sandbox/faults", {"kind": "slow", "delay": 3})
    with pytest.raises(TelegramNetworkError, match="timeout"):
        await bot.send_message(1, "slow", request_timeout=1)
    await bot.send_message(2, "quick")


async def test_bad_fault_requests_say_what_is_wrong(sandbox):
    async with (
        aiohttp.ClientSession() as http,
        http.post(sandbox.url + "/sandbox/faults", json={"kind": "418"}) as resp,
    ):
        assert resp.status == 400
        assert "kind must be one of" in await resp.text()


async def test_a_malformed_token_is_unauthorized(sandbox):
    async with (
        aiohttp.ClientSession() as http,
        http.post(sandbox.url + "/botnot-a-token/sendMessage", data={"chat_id": "1", "text": "x"}) as resp,
    ):
        assert resp.status == 401
        assert (await resp.json())["ok"] is False


async def test_enforced_limits_answer_429_per_chat_and_per_group(sandbox, bot):
    limits = {"enforce": True, "per_chat_interval": 30.0, "group_max": 2, "group_window": 60.0}
    assert (await sandbox_call(sandbox, "POST", "/sandbox/limits", limits))["enforce"] is True

    await bot.send_message(11, "one")
    with pytest.raises(TelegramRetryAfter) as refused:
        await bot.send_message(11, "two, too soon")
    assert refused.value.retry_after >= 1
    await bot.send_message(12, "another chat is fine")

    await sandbox_call(sandbox, "POST", "/sandbox/limits", {"per_chat_interval": 0.0})
    await bot.send_message(-13, "g1")
    await bot.send_message(-13, "g2")
    with pytest.raises(TelegramRetryAfter):
        await bot.send_message(-13, "g3, past the group limit")
    await bot.send_message(13, "a private chat has no group limit")
    await bot.send_message(13, "so a second one goes too")

    stats = await sandbox_call(sandbox, "GET", "/sandbox/stats")
    assert stats["limit_429"] == 2 and stats["total_429"] == 2 and stats["received"] == 6

    await sandbox_call(sandbox, "POST", "/sandbox/limits", {"enforce": False})
    await bot.send_message(-13, "limits off")


async def test_the_global_limit_applies_across_chats():
    limits = SandboxLimits(per_chat_interval=0, global_max=3, global_window=60, leniency=1)
    sandbox = await start_sandbox(enforce_limits=True, console=False, limits=limits)
    try:
        session = AiohttpSession(api=TelegramAPIServer.from_base(sandbox.url))
        async with Bot(new_token(), session=session) as b:
            for chat in (1, 2, 3):
                await b.send_message(chat, "ok")
            with pytest.raises(TelegramRetryAfter):
                await b.send_message(4, "fourth within the window")
    finally:
        await sandbox.close()


async def test_get_updates_returns_injected_messages_and_confirms_by_offset(sandbox, bot):
    posted = await sandbox_call(
        sandbox, "POST", "/sandbox/incoming", {"chat_id": 555, "text": "/status", "from_id": 77}
    )
    updates = await bot.get_updates(timeout=0)
    assert [u.update_id for u in updates] == [posted["update_id"]]
    message = updates[0].message
    assert message is not None and message.text == "/status"
    assert message.chat.id == 555 and message.from_user is not None and message.from_user.id == 77
    assert message.entities is not None and message.entities[0].type == "bot_command"

    assert len(await bot.get_updates(timeout=0)) == 1  # not confirmed yet
    assert await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0) == []


async def test_a_long_poll_wakes_when_a_message_comes_in(sandbox, bot):
    poll = asyncio.create_task(bot.get_updates(timeout=30, request_timeout=40))
    await eventually(
        lambda: sandbox_call(sandbox, "GET", "/sandbox/stats"),
        until=lambda stats: stats["polls_waiting"] == 1,
        what="the long poll to wait in the sandbox",
    )
    await sandbox_call(sandbox, "POST", "/sandbox/incoming", {"chat_id": -9, "text": "/help"})
    updates = await asyncio.wait_for(poll, timeout=10)
    assert [u.message.text for u in updates if u.message] == ["/help"]


async def test_the_console_shows_messages_and_never_the_token(capsys, caplog):
    caplog.set_level(logging.DEBUG)
    token = new_token()
    sandbox = await start_sandbox(console=True)
    try:
        session = AiohttpSession(api=TelegramAPIServer.from_base(sandbox.url))
        async with Bot(token, session=session) as b:
            await b.send_message(31337, "hello console")
            await sandbox_call(sandbox, "POST", "/sandbox/faults", {"kind": "500"})
            with pytest.raises(TelegramServerError):
                await b.send_message(31337, "fails")
    finally:
        await sandbox.close()
    out = capsys.readouterr()
    assert "chat 31337 #1: hello console" in out.out
    assert token not in out.out + out.err + caplog.text
    assert token.split(":")[1] not in out.out + out.err + caplog.text
