"""Operator notices on real PostgreSQL and the sandbox: each goes out once, and a slow send
holds no transaction open (a server's idle_in_transaction_session_timeout cannot end it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.notifier.notices import NoticeDesk
from services.notifier.telegram import AiogramSender, RateLimiter
from services.telegram_sandbox.app import RunningSandbox
from shared.db import create_pool
from shared.events import NoticeKind, OperatorNotice
from tests.support.eventually import eventually
from tests.support.sandbox import inject, new_token, received, stats

CHAT = "7070"


@pytest.fixture
async def sender(sandbox: RunningSandbox) -> AsyncIterator[AiogramSender]:
    limiter = RateLimiter(per_chat_interval=0.01, group_max=1000, group_window=1.0, global_interval=0.002)
    async with AiogramSender(new_token(), api_url=sandbox.url, limiter=limiter) as s:
        yield s


@pytest.fixture
async def strict_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a database whose server ends any session idle in a transaction for 300 ms."""
    admin = await asyncpg.connect(database_url)
    try:
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(f'ALTER DATABASE "{database}" SET idle_in_transaction_session_timeout = 300')
    finally:
        await admin.close()
    pool = await create_pool(database_url, max_size=4)
    assert await pool.fetchval("SHOW idle_in_transaction_session_timeout") == "300ms"
    yield pool
    await pool.close()


def alert() -> OperatorNotice:
    return OperatorNotice(kind=NoticeKind.INVARIANT_VIOLATION, counts={"lost_signals": 1}, hours=12)


async def notice_rows(pool: asyncpg.Pool, notice: OperatorNotice) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT kind, chat_id, blocked, telegram_message_id FROM telegram_messages"
        " WHERE context_json ->> 'notice_id' = $1",
        str(notice.notice_id),
    )


async def test_a_send_slower_than_the_servers_idle_transaction_limit_is_recorded_once(
    strict_pool: asyncpg.Pool, sender: AiogramSender, sandbox: RunningSandbox
) -> None:
    await inject(sandbox.url, "slow", delay=1.0)
    desk = NoticeDesk(pool=strict_pool, sender=sender, chat_id=CHAT)
    notice = alert()

    assert await desk.deliver(notice) is True

    rows = await notice_rows(strict_pool, notice)
    assert [(r["kind"], r["chat_id"], r["blocked"]) for r in rows] == [("ALERT", CHAT, False)]
    messages = await received(sandbox.url, CHAT)
    assert [m["message_id"] for m in messages] == [rows[0]["telegram_message_id"]]
    # Redelivered, it is not sent again.
    assert await desk.deliver(notice) is False
    assert len(await received(sandbox.url, CHAT)) == 1


async def test_two_notifiers_racing_on_one_slow_notice_send_it_once(
    strict_pool: asyncpg.Pool, database_url: str, sender: AiogramSender, sandbox: RunningSandbox
) -> None:
    other_pool = await create_pool(database_url, max_size=4)
    try:
        await inject(sandbox.url, "slow", delay=0.6)
        notice = alert()
        first = NoticeDesk(pool=strict_pool, sender=sender, chat_id=CHAT)
        second = NoticeDesk(pool=other_pool, sender=sender, chat_id=CHAT)

        sent = await asyncio.gather(first.deliver(notice), second.deliver(notice))

        assert sorted(sent) == [False, True]
        assert len(await notice_rows(strict_pool, notice)) == 1
        assert len(await received(sandbox.url, CHAT)) == 1
        # Both sessions let the lock go: a third delivery decides at once.
        assert await asyncio.wait_for(first.deliver(notice), timeout=5) is False
        for pool in (strict_pool, other_pool):
            held = await pool.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            assert held == 0
    finally:
        await other_pool.close()


async def test_a_notice_whose_sessions_end_during_its_send_is_sent_once_and_recorded(
    strict_pool: asyncpg.Pool, database_url: str, sender: AiogramSender, sandbox: RunningSandbox
) -> None:
    await inject(sandbox.url, "slow", delay=1.0)
    desk = NoticeDesk(pool=strict_pool, sender=sender, chat_id=CHAT)
    notice = alert()
    delivery = asyncio.create_task(desk.deliver(notice))
    # Telegram has the request in hand: every session of the database ends under it (a
    # failover, a restart), the one holding the notice's lock among them.
    await eventually(lambda: stats(sandbox.url), until=lambda s: s["faults"].get("slow", 0) == 1)
    admin = await asyncpg.connect(database_url)
    try:
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    assert ended >= 1

    assert await asyncio.wait_for(delivery, timeout=30) is True

    assert len(await notice_rows(strict_pool, notice)) == 1
    assert len(await received(sandbox.url, CHAT)) == 1
    assert await desk.deliver(notice) is False
