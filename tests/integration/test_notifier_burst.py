"""A burst to one group chat: coalesced within Telegram's limits, every line once, every row its message."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from services.notifier.app import build_app
from services.notifier.messages import TELEGRAM_LIMIT, tg_len
from services.telegram_sandbox.app import RunningSandbox, start_sandbox
from shared.events import SignalEmitted
from tests.integration.test_notifier import decided, plant_intent, publish
from tests.support.eventually import eventually
from tests.support.pipeline import running, signal
from tests.support.sandbox import new_token, received, stats

GROUP_CHAT = "-1009876543210"
BURST = 200
FAILING_EVERY = 5


@pytest.fixture
async def limited_sandbox() -> AsyncIterator[RunningSandbox]:
    """A sandbox answering 429 past Telegram's real limits (1/s per chat, 20/min per group)."""
    running_sandbox = await start_sandbox(enforce_limits=True)
    yield running_sandbox
    await running_sandbox.close()


async def _recorded(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> list[Any]:
    return await pool.fetch(
        "SELECT signal_id, kind, message, telegram_message_id, blocked FROM telegram_messages"
        " WHERE signal_id = ANY($1::uuid[])",
        ids,
    )


async def test_a_200_signal_burst_is_coalesced_within_the_limits_and_each_row_names_its_message(
    make_settings, pool, redis, names, limited_sandbox
) -> None:
    settings = make_settings(
        TELEGRAM_BOT_TOKEN=new_token(), TELEGRAM_CHAT_ID=GROUP_CHAT, TELEGRAM_API_URL=limited_sandbox.url
    )
    sigs: list[SignalEmitted] = [
        signal("ZZZ_USDT", "SELL") if i % FAILING_EVERY == 0 else signal() for i in range(BURST)
    ]
    failing = [s for i, s in enumerate(sigs) if i % FAILING_EVERY == 0]
    failures = [decided(s, "ORDER_FAILED", "FAILED", "INSUFFICIENT_FUNDS", "no ZZZ held") for s in failing]
    for event in failures:
        await plant_intent(pool, event)

    async with running(build_app(settings)):
        for sig in sigs:
            await publish(redis, names.signals, sig)
        for event in failures:
            await publish(redis, names.order_decisions, event)
        rows = await eventually(
            lambda: _recorded(pool, [s.signal_id for s in sigs]),
            until=lambda r: len(r) == BURST + len(failing),
            timeout=120,
            what="a row for every signal and every failed order",
        )

    messages = await received(limited_sandbox.url, GROUP_CHAT)
    assert (await stats(limited_sandbox.url))["total_429"] == 0
    assert len(messages) < BURST / 4, "queued signals must share messages"
    assert all(tg_len(m["text"]) <= TELEGRAM_LIMIT for m in messages)

    where: dict[tuple[str, str], list[int]] = {}
    for m in messages:
        for line in m["text"].splitlines():
            kind = "ORDER_FAILED" if "ORDER FAILED" in line else "SIGNAL"
            for sig in sigs:
                if str(sig.signal_id)[:8] in line:
                    where.setdefault((str(sig.signal_id), kind), []).append(m["message_id"])
    for sig in sigs:
        assert len(where.get((str(sig.signal_id), "SIGNAL"), [])) == 1, f"signal line of {sig.signal_id}"
    for sig in failing:
        assert len(where.get((str(sig.signal_id), "ORDER_FAILED"), [])) == 1, (
            f"failure line of {sig.signal_id}"
        )
    assert len(where) == BURST + len(failing)

    for row in rows:
        assert not row["blocked"]
        assert row["telegram_message_id"] == where[(str(row["signal_id"]), row["kind"])][0]
        line = next(
            line
            for m in messages
            if m["message_id"] == row["telegram_message_id"]
            for line in m["text"].splitlines()
            if str(row["signal_id"])[:8] in line
            and ("ORDER FAILED" in line) == (row["kind"] == "ORDER_FAILED")
        )
        assert line == row["message"]
