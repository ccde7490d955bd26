"""The §7 invariants against planted rows in a real PostgreSQL, through the real ASGI app.

Each test plants order_intents / telegram_messages rows relative to the database's clock
and asks GET /api/diagnostics/recent-signals; the edges are the ones the issue names.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from services.diagnostics import invariants
from services.diagnostics.app import asgi_app
from services.diagnostics.models import RecentSignalsReport
from shared.db import create_pool
from shared.streams import StreamNames
from tests.support.plant import DECISIONS, HOUR, MIN, Plant


@pytest.fixture
def plant(pool: asyncpg.Pool) -> Plant:
    return Plant(pool)


@pytest.fixture
async def client(pool: asyncpg.Pool, redis: Any, names: StreamNames) -> AsyncIterator[httpx.AsyncClient]:
    app = asgi_app(names=names, redis=redis, pool=pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://diag") as c:
        yield c


async def report(client: httpx.AsyncClient, **params: Any) -> RecentSignalsReport:
    response = await client.get("/api/diagnostics/recent-signals", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"signals", "total", "hours", "counts", "violations", "pass", "summary"}
    return RecentSignalsReport.model_validate(body)


def violated(rep: RecentSignalsReport, kind: str) -> set[str | None]:
    return {v.signal_id for v in rep.violations if v.type == kind}


async def test_a_clean_pipeline_passes_with_every_count(client: httpx.AsyncClient, plant: Plant) -> None:
    for status in ("ORDER_PLACED", "ORDER_PLACED", "ORDER_FAILED", "DEDUP_SKIPPED", "BLOCKED_LIVE_TRADING"):
        await plant.signal(status)
    rep = await report(client, hours=12)
    assert rep.passed and rep.summary.verdict == "PASS"
    assert rep.counts.model_dump() == {
        "total_signals": 5,
        "placed": 2,
        "failed": 1,
        "dedup": 1,
        "blocked": 1,
        "in_flight": 0,
        "missing_intent": 0,
        "null_decisions": 0,
        "failed_without_telegram": 0,
    }
    assert rep.total == 5 and rep.hours == 12 and rep.violations == []
    failed = [s for s in rep.signals if s.intent_status == "ORDER_FAILED"]
    assert [s.failure_notified for s in failed] == [True]
    assert {s.failure_notified for s in rep.signals if s.intent_status != "ORDER_FAILED"} == {None}


async def test_failure_message_4m59s_after_the_decision_passes_and_5m01s_fails(
    client: httpx.AsyncClient, plant: Plant
) -> None:
    on_time, too_late, early, too_early = [
        await plant.intent(status="ORDER_FAILED", decided_ago=HOUR) for _ in range(4)
    ]
    await plant.failure_notice(on_time, ago=HOUR - (4 * MIN + 59))
    await plant.failure_notice(too_late, ago=HOUR - (5 * MIN + 1))
    await plant.failure_notice(early, ago=HOUR + (4 * MIN + 59))
    await plant.failure_notice(too_early, ago=HOUR + (5 * MIN + 1))
    rep = await report(client, hours=12)
    assert violated(rep, "failed_without_telegram") == {str(too_late), str(too_early)}
    assert rep.counts.failed_without_telegram == 2
    late = next(v for v in rep.violations if v.signal_id == str(too_late))
    assert "5m01s after" in late.detail and late.symbol == "BTC_USDT"


async def test_failure_message_of_another_signal_or_blocked_does_not_count(
    client: httpx.AsyncClient, plant: Plant
) -> None:
    other_notified = await plant.intent(status="ORDER_FAILED", decided_ago=HOUR)
    await plant.failure_notice(uuid.uuid4(), ago=HOUR - 3)
    blocked_notice = await plant.intent(status="ORDER_FAILED", decided_ago=HOUR)
    await plant.failure_notice(blocked_notice, ago=HOUR - 3, blocked=True)
    rep = await report(client, hours=12)
    assert violated(rep, "failed_without_telegram") == {str(other_notified), str(blocked_notice)}
    never = next(v for v in rep.violations if v.signal_id == str(other_notified))
    assert "no ORDER FAILED message was sent" in never.detail


async def test_failed_intent_decision_time_falls_back_to_updated_at(
    client: httpx.AsyncClient, plant: Plant
) -> None:
    undecided = await plant.intent(status="ORDER_FAILED", decided_ago=None, updated_ago=2 * HOUR)
    notified = await plant.intent(status="ORDER_FAILED", decided_ago=None, updated_ago=2 * HOUR)
    await plant.failure_notice(notified, ago=2 * HOUR - 60)
    rep = await report(client, hours=12)
    assert violated(rep, "failed_without_telegram") == {str(undecided)}
    (v,) = rep.violations
    assert abs((v.at - await plant.at(2 * HOUR)).total_seconds()) < 1


async def test_blocked_signal_messages_are_not_sent_signals(client: httpx.AsyncClient, plant: Plant) -> None:
    await plant.message(uuid.uuid4(), ago=HOUR, blocked=True, decision=(None, None))
    await plant.message(
        uuid.uuid4(), ago=HOUR, text="ℹ️ status: all quiet", kind="INFO", decision=(None, None)
    )
    rep = await report(client, hours=12)
    assert rep.counts.total_signals == 0 and rep.passed and rep.signals == []


async def test_inside_grace_is_in_flight_and_outside_is_missing(
    client: httpx.AsyncClient, plant: Plant
) -> None:
    young = uuid.uuid4()
    await plant.message(young, ago=10, decision=(None, None))
    old = uuid.uuid4()
    await plant.message(old, ago=5 * MIN, decision=(None, None))
    rep = await report(client, hours=12, grace_seconds=60)
    assert rep.counts.in_flight == 1 and rep.counts.missing_intent == 1
    assert violated(rep, "missing_intent") == {str(old)}
    assert violated(rep, "null_decisions") == {str(old)}
    assert not rep.passed
    rep0 = await report(client, hours=12, grace_seconds=0)
    assert violated(rep0, "missing_intent") == {str(young), str(old)} and rep0.counts.in_flight == 0


async def test_a_pending_intent_past_grace_is_missing(client: httpx.AsyncClient, plant: Plant) -> None:
    stuck = await plant.intent(status="PENDING", decided_ago=None, updated_ago=HOUR)
    await plant.message(stuck, ago=HOUR)
    rep = await report(client, hours=12)
    assert violated(rep, "missing_intent") == {str(stuck)}
    assert "still PENDING" in rep.violations[0].detail
    assert rep.signals[0].intent_status == "PENDING"


async def test_null_decisions_name_the_null_column(client: httpx.AsyncClient, plant: Plant) -> None:
    no_type = await plant.intent(decided_ago=HOUR)
    await plant.message(no_type, ago=HOUR, decision=(None, "ORDER_PLACED"))
    no_code = await plant.intent(decided_ago=HOUR)
    await plant.message(no_code, ago=HOUR, decision=("EXECUTED", None))
    young = await plant.intent(decided_ago=5)
    await plant.message(young, ago=5, decision=(None, None))
    rep = await report(client, hours=12)
    assert violated(rep, "null_decisions") == {str(no_type), str(no_code)}
    details = {v.signal_id: v.detail for v in rep.violations}
    assert "decision_type is NULL" in details[str(no_type)]
    assert "reason_code is NULL" in details[str(no_code)]
    assert rep.counts.missing_intent == 0 and rep.counts.placed == 3


async def test_rows_just_outside_the_window_are_not_counted(client: httpx.AsyncClient, plant: Plant) -> None:
    inside = uuid.uuid4()
    await plant.message(inside, ago=12 * HOUR - MIN)
    await plant.message(uuid.uuid4(), ago=12 * HOUR + MIN)
    failed_inside = await plant.intent(status="ORDER_FAILED", decided_ago=12 * HOUR - MIN)
    await plant.intent(status="ORDER_FAILED", decided_ago=12 * HOUR + MIN)
    rep = await report(client, hours=12)
    assert rep.counts.total_signals == 1
    assert violated(rep, "missing_intent") == {str(inside)}
    assert violated(rep, "failed_without_telegram") == {str(failed_inside)}
    wider = await report(client, hours=13)
    assert wider.counts.total_signals == 2 and wider.counts.failed_without_telegram == 2


async def test_limit_cuts_the_lists_but_not_the_counts(client: httpx.AsyncClient, plant: Plant) -> None:
    for i in range(4):
        await plant.signal(ago=HOUR + i)
    missing = []
    for i in range(5):
        sid = uuid.uuid4()
        await plant.message(sid, ago=2 * HOUR + i * MIN)
        missing.append(str(sid))
    rep = await report(client, hours=12, limit=3)
    assert rep.counts.total_signals == 9 and rep.counts.missing_intent == 5 and rep.total == 9
    assert len(rep.signals) == 3 and len(rep.violations) == 3
    assert rep.summary.signals_truncated and rep.summary.violations_truncated
    assert [v.signal_id for v in rep.violations] == missing[:3]  # newest first
    sent = [s.sent_at for s in rep.signals]
    assert sent == sorted(sent, reverse=True)
    assert not rep.passed
    full = await report(client, hours=12, limit=5000)
    assert [v.signal_id for v in full.violations] == missing
    assert len(full.signals) == 9 and not full.summary.signals_truncated


async def test_violations_name_exactly_the_planted_ids(client: httpx.AsyncClient, plant: Plant) -> None:
    for status in DECISIONS:
        if status != "PENDING":
            await plant.signal(status, ago=30 * MIN)
    no_intent = uuid.uuid4()
    await plant.message(no_intent, ago=HOUR, symbol="ETH_USDT", side="SELL")
    no_trace = await plant.intent(decided_ago=HOUR)
    await plant.message(no_trace, ago=HOUR, decision=(None, None))
    unannounced = await plant.intent(status="ORDER_FAILED", decided_ago=HOUR, symbol="SOL_USDT")
    await plant.message(unannounced, ago=HOUR, symbol="SOL_USDT", decision=DECISIONS["ORDER_FAILED"])
    rep = await report(client, hours=12)
    assert {(v.type, v.signal_id) for v in rep.violations} == {
        ("missing_intent", str(no_intent)),
        ("null_decisions", str(no_trace)),
        ("failed_without_telegram", str(unannounced)),
    }
    symbols = {v.signal_id: v.symbol for v in rep.violations}
    assert symbols[str(no_intent)] == "ETH_USDT" and symbols[str(unannounced)] == "SOL_USDT"
    by_id = {s.signal_id: s for s in rep.signals}
    assert by_id[str(unannounced)].failure_notified is False
    assert by_id[str(no_intent)].side == "SELL" and by_id[str(no_intent)].intent_status is None
    c = rep.counts
    assert c.placed + c.failed + c.dedup + c.blocked + c.in_flight + c.missing_intent == c.total_signals


async def test_side_comes_from_the_intent_and_otherwise_from_one_message(
    client: httpx.AsyncClient, plant: Plant
) -> None:
    with_intent = await plant.intent(side="SELL", decided_ago=HOUR)
    await plant.message(with_intent, ago=HOUR, side="BUY")
    coalesced = uuid.uuid4()
    await plant.message(coalesced, ago=HOUR, text="🟢 <b>BUY SIGNAL</b> A\n🔴 <b>SELL SIGNAL</b> B")
    rep = await report(client, hours=12)
    sides = {s.signal_id: s.side for s in rep.signals}
    assert sides == {str(with_intent): "SELL", str(coalesced): None}


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("hours", 0),
        ("hours", 721),
        ("hours", "abc"),
        ("limit", 0),
        ("limit", 5001),
        ("grace_seconds", -1),
        ("grace_seconds", 3601),
    ],
)
async def test_out_of_range_parameters_answer_422_naming_them(
    client: httpx.AsyncClient, param: str, value: Any
) -> None:
    response = await client.get("/api/diagnostics/recent-signals", params={param: value})
    assert response.status_code == 422
    body = response.json()
    assert body["message"].startswith(f"{param}: ")
    assert [e["loc"] for e in body["detail"]] == [["query", param]]


async def test_edges_of_the_ranges_are_accepted(client: httpx.AsyncClient) -> None:
    for params in (
        {"hours": 1, "limit": 1, "grace_seconds": 0},
        {"hours": 720, "limit": 5000, "grace_seconds": 3600},
    ):
        assert (await client.get("/api/diagnostics/recent-signals", params=params)).status_code == 200


async def test_the_listing_runs_without_parallel_workers_and_the_connection_keeps_its_setting(
    database_url: str, plant: Plant
) -> None:
    """The list is read with parallel workers off (SET LOCAL), and the pooled connection the
    report ran on comes back with the server's setting: the next query on it may go parallel."""
    for status in ("ORDER_PLACED", "ORDER_FAILED"):
        await plant.signal(status)
    one = await create_pool(database_url, min_size=1, max_size=1)
    try:
        default = await one.fetchval("SHOW max_parallel_workers_per_gather")
        seen: list[str] = []
        real_fetch = asyncpg.Connection.fetch

        async def fetch(conn: asyncpg.Connection, sql: str, *args: Any, **kw: Any) -> Any:
            if sql == invariants.SIGNALS_SQL:
                seen.append(await conn.fetchval("SHOW max_parallel_workers_per_gather"))
            return await real_fetch(conn, sql, *args, **kw)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(asyncpg.Connection, "fetch", fetch)
            rep = await invariants.recent_signals(one, invariants.Window(hours=12))
        assert rep.total == 2 and len(rep.signals) == 2
        assert seen == ["0"]
        assert await one.fetchval("SHOW max_parallel_workers_per_gather") == default
    finally:
        await one.close()
