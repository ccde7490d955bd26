"""The watchdog on real PostgreSQL and Redis, the notifier and orchestrator in-process, Telegram the sandbox.

Violations are planted as rows; the watchdog finds them, alerts once, repairs them by
re-publishing, and says RESOLVED once the pipeline has done the rest.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from services.diagnostics.app import build_app as build_diagnostics
from services.diagnostics.verify import EXIT_PASS, verify
from services.diagnostics.watchdog import REPUBLISH_DECISION, REPUBLISH_SIGNAL, Watchdog
from services.notifier.app import build_app as build_notifier
from services.notifier.messages import signal_text
from services.orchestrator.app import build_app as build_orchestrator
from shared.embedded import free_port
from shared.events import NoticeKind
from shared.settings import Settings, WatchdogSettings
from shared.streams import StreamNames
from tests.support.eventually import eventually
from tests.support.ops import containing, metric
from tests.support.pipeline import events, group_drained, running, signal
from tests.support.plant import Plant
from tests.support.sandbox import new_token

CHAT = "5151"
ROUNDS = "intentflow_watchdog_rounds_total"


@pytest.fixture
def settings(make_settings: Callable[..., Settings], sandbox: Any) -> Callable[..., Settings]:
    def build(**extra: Any) -> Settings:
        return make_settings(
            TELEGRAM_BOT_TOKEN=new_token(),
            TELEGRAM_CHAT_ID=CHAT,
            TELEGRAM_API_URL=sandbox.url,
            WATCHDOG_INTERVAL_SECONDS="0.3",
            WATCHDOG_GRACE_SECONDS="1",
            WATCHDOG_MAX_REPAIRS="3",
            **extra,
        )

    return build


def watchdog(pool: asyncpg.Pool, redis: Redis, names: StreamNames, **overrides: Any) -> Watchdog:
    """A watchdog driven round by round by the test (interval and grace as in production but short)."""
    values: dict[str, Any] = {
        "watchdog_interval_seconds": 0.3,
        "watchdog_grace_seconds": 1,
        "watchdog_max_repairs": 3,
    }
    values.update(overrides)
    return Watchdog(pool=lambda: pool, redis=redis, names=names, settings=WatchdogSettings(**values))


async def plant_sent_signal_without_intent(pool: asyncpg.Pool) -> uuid.UUID:
    """A signal whose message went out (with its event kept on the row) but whose intent was never made."""
    sig = signal(symbol="ETH_USDT", price="2000", ago=30)
    await Plant(pool).message(
        sig.signal_id,
        ago=30,
        text=signal_text(sig),
        symbol=sig.symbol,
        decision=(None, None),
        context={"coalesced": 1, "event": sig.model_dump(mode="json")},
    )
    return sig.signal_id


async def rounds(base: str) -> float:
    return await metric(base, ROUNDS) or 0.0


async def test_a_lost_signal_is_alerted_once_repaired_and_resolved_without_a_person(
    settings: Callable[..., Settings], pool: asyncpg.Pool, sandbox: Any
) -> None:
    lost = await plant_sent_signal_without_intent(pool)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = settings(DIAGNOSTICS_PORT=port)
    async with (
        running(build_orchestrator(cfg)),
        running(build_notifier(cfg)),
        running(build_diagnostics(cfg)),
    ):
        alerts = await eventually(
            lambda: containing(sandbox.url, "INVARIANT VIOLATION"), what="the watchdog's alert"
        )
        assert str(lost) in alerts[0] and "missing_intent: 1" in alerts[0]
        status = await eventually(
            lambda: pool.fetchval("SELECT status FROM order_intents WHERE signal_id = $1", lost),
            what="the intent made from the re-published signal",
        )
        assert status == "ORDER_PLACED"
        await eventually(lambda: containing(sandbox.url, "RESOLVED"), what="RESOLVED")
        verdict = await asyncio.to_thread(verify, base, hours=1, grace_seconds=1)
        assert verdict.code == EXIT_PASS, verdict.out + verdict.err
        # A few more rounds pass in silence.
        seen = await rounds(base)
        await eventually(lambda: rounds(base), until=lambda n: n >= seen + 3, what="three more rounds")
        repairs = await metric(base, "intentflow_watchdog_repairs_total", f'repair="{REPUBLISH_SIGNAL}"')
        assert repairs is not None and 1 <= repairs <= 3

    assert len(await containing(sandbox.url, "INVARIANT VIOLATION")) == 1
    assert len(await containing(sandbox.url, "RESOLVED")) == 1
    # The repair re-published the signal; its message (planted) was not sent again.
    assert await containing(sandbox.url, "BUY SIGNAL") == []
    kinds = await pool.fetch("SELECT kind FROM telegram_messages WHERE signal_id IS NULL ORDER BY id")
    assert [r["kind"] for r in kinds] == ["ALERT", "RESOLVED"]
    assert await pool.fetchval("SELECT attempts FROM watchdog_repairs WHERE signal_id = $1", lost) == repairs


async def test_a_failed_order_without_its_message_gets_it_within_one_round(
    settings: Callable[..., Settings], pool: asyncpg.Pool, redis: Redis, names: StreamNames, sandbox: Any
) -> None:
    plant = Plant(pool)
    failed = await plant.intent(status="ORDER_FAILED", decided_ago=30, symbol="SOL_USDT", side="SELL")
    await plant.message(
        failed, ago=31, symbol="SOL_USDT", side="SELL", decision=("FAILED", "INSUFFICIENT_FUNDS")
    )
    dog = watchdog(pool, redis, names)
    async with running(build_notifier(settings())):
        first = await dog.round(pool)
        assert not first.report.passed and first.repaired == {REPUBLISH_DECISION: [failed]}
        notice = await eventually(
            lambda: containing(sandbox.url, "ORDER FAILED"), what="the failure message sent by the repair"
        )
        assert "SOL_USDT SELL" in notice[0] and "INSUFFICIENT_FUNDS" in notice[0]
        await eventually(
            lambda: pool.fetchval(
                "SELECT count(*) FROM telegram_messages WHERE signal_id = $1 AND kind = 'ORDER_FAILED'",
                failed,
            ),
            what="the failure message recorded",
        )
        second = await dog.round(pool)
        assert second.report.passed and second.notice is not None
        assert second.notice.kind is NoticeKind.RESOLVED
        await eventually(lambda: containing(sandbox.url, "RESOLVED"), what="RESOLVED")
    assert len(await containing(sandbox.url, "ORDER FAILED")) == 1
    assert len(await containing(sandbox.url, "INVARIANT VIOLATION")) == 1


async def test_ten_rounds_of_one_unchanged_violation_send_one_alert(
    settings: Callable[..., Settings], pool: asyncpg.Pool, redis: Redis, names: StreamNames, sandbox: Any
) -> None:
    # No event on the row: the watchdog cannot repair it, so the violation stays for ten rounds.
    stuck = uuid.uuid4()
    await Plant(pool).message(stuck, ago=60, decision=(None, None))
    dog = watchdog(pool, redis, names)
    results = [await dog.round(pool) for _ in range(10)]
    assert all(not r.report.passed for r in results)
    assert [r.notice.kind for r in results if r.notice is not None] == [NoticeKind.INVARIANT_VIOLATION]
    assert all(r.repaired == {} for r in results)
    published = await events(redis, names.notices)
    assert len(published) == 1 and published[0]["signal_ids"] == [str(stuck)]
    async with running(build_notifier(settings())):
        await eventually(lambda: containing(sandbox.url, "INVARIANT VIOLATION"), what="the alert")
        await eventually(lambda: group_drained(redis, names.notices, "notifier"), what="notices drained")
    assert len(await containing(sandbox.url, "INVARIANT VIOLATION")) == 1


async def test_two_watchdogs_alert_once_and_repair_within_the_limit(
    pool: asyncpg.Pool, redis: Redis, names: StreamNames
) -> None:
    lost = await plant_sent_signal_without_intent(pool)
    dogs = [
        watchdog(pool, redis, names, watchdog_grace_seconds=0, watchdog_interval_seconds=0.01)
        for _ in range(2)
    ]
    notices: list[Any] = []
    for _ in range(6):
        results = await asyncio.gather(*(d.round(pool) for d in dogs))
        notices += [r.notice for r in results if r.notice is not None]
        await asyncio.sleep(0.02)  # let the repair spacing (the interval) pass between rounds
    assert [n.kind for n in notices] == [NoticeKind.INVARIANT_VIOLATION]
    assert len(await events(redis, names.notices)) == 1
    republished = [e for e in await events(redis, names.signals) if e["signal_id"] == str(lost)]
    assert len(republished) == 3  # WATCHDOG_MAX_REPAIRS, shared by both replicas
    assert await pool.fetchval("SELECT attempts FROM watchdog_repairs WHERE signal_id = $1", lost) == 3


async def test_a_notice_left_in_the_outbox_is_published_by_the_next_round(
    pool: asyncpg.Pool, redis: Redis, names: StreamNames
) -> None:
    await Plant(pool).message(uuid.uuid4(), ago=60, decision=(None, None))
    dog = watchdog(pool, redis, names)
    first = await dog.round(pool)
    assert first.notice is not None
    # As if the process died between recording the verdict and publishing its notice.
    await redis.delete(names.notices)
    await pool.execute("UPDATE watchdog_state SET notice_published = false")
    again = await dog.round(pool)
    assert again.notice is None
    published = await events(redis, names.notices)
    assert [p["notice_id"] for p in published] == [str(first.notice.notice_id)]
