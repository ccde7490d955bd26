"""The strategy engine inside the real service: the shipped sample replayed into a real Redis
stream, and the gates (cooldown, price change, alerts) holding across a restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from services.signal_monitor.app import SignalMonitorService, build_app
from services.signal_monitor.gates import Result
from shared.embedded import EmbeddedRedis, free_port
from shared.events import SignalEmitted
from shared.redis import create_redis
from shared.settings import Settings
from shared.streams import StreamNames
from tests.integration import test_webhook
from tests.integration.test_webhook import SECRET, contract, serve
from tests.support.eventually import eventually
from tests.support.pipeline import events
from tests.unit.test_strategy import DATA, predict_sample_signals

monitor_settings = test_webhook.monitor_settings  # the same fixture: Settings for this test's prefix


def sample_watchlist(tmp_path: Path, *, speed: float = 0) -> Path:
    """The shipped sample watchlist, pointing at the shipped candles, replayed at `speed`."""
    text = (DATA / "watchlist.sample.toml").read_text()
    text = text.replace('path = "sample_candles.csv"', f'path = "{DATA / "sample_candles.csv"}"')
    assert "speed = 60 " in text
    text = text.replace("speed = 60 ", f"speed = {speed} ")
    path = tmp_path / "watchlist.toml"
    path.write_text(text)
    return path


async def replay_finished(service: SignalMonitorService) -> bool:
    return service.engine is not None and service.engine.done.is_set()


def per_entry(entries: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[str, Decimal]]]:
    out: dict[tuple[str, str], list[tuple[str, Decimal]]] = {}
    for e in entries:
        out.setdefault((e["symbol"], e["strategy"]), []).append((e["side"], Decimal(e["price"])))
    return out


async def test_replaying_the_sample_publishes_exactly_the_predicted_signals(
    monitor_settings: Callable[..., Settings], tmp_path: Path, redis: Redis, names: StreamNames
) -> None:
    expected = predict_sample_signals()
    settings = monitor_settings(WATCHLIST_FILE=sample_watchlist(tmp_path))
    started = datetime.now(UTC)
    async with serve(build_app(settings)) as hook:
        await eventually(lambda: replay_finished(hook.service), what="replay finished")
        async with httpx.AsyncClient(base_url=hook.base) as client:
            health = (await client.get("/healthz")).json()
        assert health["engine"]["running"] == 0
        assert health["engine"]["entries"] == 3
    published = await events(redis, names.signals)
    assert len(published) == len(expected)
    want = per_entry([{"symbol": s, "strategy": k, "side": d, "price": p} for s, k, _, d, p in expected])
    assert per_entry(published) == want
    for event in published:
        SignalEmitted.model_validate(event)
        assert event["source"] == "strategy"
        # emitted_at is when the signal was sent, not the candle's (historical) time.
        assert datetime.fromisoformat(event["emitted_at"]) >= started - timedelta(seconds=1)
    assert len({e["signal_id"] for e in published}) == len(published)


async def test_a_restarted_replay_is_held_by_the_cooldown_kept_in_redis(
    monitor_settings: Callable[..., Settings], tmp_path: Path, redis: Redis, names: StreamNames
) -> None:
    settings = monitor_settings(WATCHLIST_FILE=sample_watchlist(tmp_path))
    async with serve(build_app(settings)) as first:
        await eventually(lambda: replay_finished(first.service), what="first replay finished")
    count = len(await events(redis, names.signals))
    assert count == len(predict_sample_signals())
    # A new service on the same prefix replays the same candles: every signal falls inside the
    # cooldown recorded by the first run (its time is not after the last one passed), so none is sent.
    async with serve(build_app(settings)) as second:
        await eventually(lambda: replay_finished(second.service), what="second replay finished")
        assert second.service.engine is not None
        stats = second.service.engine.stats.values()
    assert sum(s.fired for s in stats) > 0
    assert sum(s.held for s in stats) == sum(s.fired for s in stats)
    assert len(await events(redis, names.signals)) == count


def gates_watchlist(tmp_path: Path) -> Path:
    """A watchlist whose entries only configure gates (none runs): what webhook signals obey."""
    path = tmp_path / "gates.toml"
    path.write_text(
        f"""
[feed]
kind = "replay"
path = "{DATA / "sample_candles.csv"}"

[defaults]
cooldown_seconds = 3600

[[symbols]]
symbol = "ETH_USDT"
strategy = "rsi:pct"
enabled = false
cooldown_seconds = 0
min_price_change_pct = 1

[[symbols]]
symbol = "SOL_USDT"
strategy = "rsi:off"
enabled = false
alert_enabled = false
"""
    )
    return path


async def post(base: str, **changes: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base) as client:
        return await client.post("/webhook", json=contract(**changes))


async def test_a_second_signal_inside_the_cooldown_is_held_also_after_a_restart(
    monitor_settings: Callable[..., Settings], tmp_path: Path, redis: Redis, names: StreamNames
) -> None:
    settings = monitor_settings(WEBHOOK_SECRET=SECRET, WATCHLIST_FILE=gates_watchlist(tmp_path))
    async with serve(build_app(settings)) as hook:
        first = await post(hook.base, price="100")
        assert first.status_code == 202, first.text
        second = await post(hook.base, price="200")
        assert second.status_code == 200, second.text
        assert (second.json()["status"], second.json()["gate"]) == ("held", "COOLDOWN")
        assert "need 3600s" in second.json()["reason"]
        other_side = await post(hook.base, price="200", side="SELL")
        assert other_side.status_code == 202  # the throttle is per (symbol, side, strategy)
    async with serve(build_app(settings)) as restarted:
        third = await post(restarted.base, price="300")
        assert third.status_code == 200, third.text
        assert third.json()["gate"] == "COOLDOWN"
    published = await events(redis, names.signals)
    assert [(e["side"], e["price"]) for e in published] == [("BUY", "100"), ("SELL", "200")]


async def test_a_signal_redis_refused_is_sent_when_the_call_is_retried_inside_the_cooldown(
    monitor_settings: Callable[..., Settings], tmp_path: Path, redis: Redis, names: StreamNames
) -> None:
    # The stream key holds a string, so Redis refuses the append (WRONGTYPE): a real refusal
    # after the gates passed. The caller is told to retry; the retry must not meet the
    # cooldown of a pass that sent nothing, nor a "published" mark without an entry.
    settings = monitor_settings(WEBHOOK_SECRET=SECRET, WATCHLIST_FILE=gates_watchlist(tmp_path))
    signal_id = str(uuid.uuid4())
    async with serve(build_app(settings)) as hook:
        await redis.set(names.signals, "not a stream")
        refused = await post(hook.base, price="100", signal_id=signal_id)
        assert refused.status_code == 503, refused.text
        assert "retry the call" in refused.json()["detail"]
        await redis.delete(names.signals)
        retried = await post(hook.base, price="100", signal_id=signal_id)
        assert retried.status_code == 202, retried.text
        assert retried.json() == {"signal_id": signal_id, "status": "published"}
        held = await post(hook.base, price="200")  # the pass that sent it counts: cooldown
        assert (held.status_code, held.json().get("gate")) == (200, "COOLDOWN")
    published = await events(redis, names.signals)
    assert [(e["signal_id"], e["price"]) for e in published] == [(signal_id, "100")]


async def test_a_smaller_price_change_than_configured_is_held(
    monitor_settings: Callable[..., Settings], tmp_path: Path, redis: Redis, names: StreamNames
) -> None:
    settings = monitor_settings(WEBHOOK_SECRET=SECRET, WATCHLIST_FILE=gates_watchlist(tmp_path))
    async with serve(build_app(settings)) as hook:
        codes = []
        for price in ("1000", "1009.99", "990.1", "1010", "1019"):
            answer = await post(hook.base, symbol="ETH_USDT", strategy="rsi:pct", price=price)
            codes.append((price, answer.status_code, answer.json().get("gate")))
    assert codes == [
        ("1000", 202, None),
        ("1009.99", 200, "PRICE_CHANGE"),  # 0.999% < 1%
        ("990.1", 200, "PRICE_CHANGE"),
        ("1010", 202, None),  # exactly 1% from 1000
        ("1019", 200, "PRICE_CHANGE"),  # 0.89% from 1010, the last one sent
    ]
    assert [e["price"] for e in await events(redis, names.signals)] == ["1000", "1010"]


async def test_alerts_disabled_for_a_symbol_hold_all_its_signals(
    monitor_settings: Callable[..., Settings], tmp_path: Path, redis: Redis, names: StreamNames
) -> None:
    settings = monitor_settings(WEBHOOK_SECRET=SECRET, WATCHLIST_FILE=gates_watchlist(tmp_path))
    async with serve(build_app(settings)) as hook:
        answer = await post(hook.base, symbol="SOL_USDT", strategy="any:thing")
        assert answer.status_code == 200
        assert answer.json()["gate"] == "ALERTS_DISABLED"
    assert await events(redis, names.signals) == []


async def test_the_gate_answers_a_published_id_as_a_duplicate_before_consulting_the_throttle(
    monitor_settings: Callable[..., Settings], tmp_path: Path, redis: Redis
) -> None:
    settings = monitor_settings(WATCHLIST_FILE=gates_watchlist(tmp_path))
    async with serve(build_app(settings)) as hook:
        gate = hook.service.gate
        assert gate is not None
        signal = SignalEmitted(signal_id=uuid.uuid4(), symbol="BTC_USDT", side="BUY", price=Decimal(5))
        first = await gate.submit(signal)
        again = await gate.submit(signal)  # inside the 3600 s cooldown, yet not "held"
        assert (first.result, again.result) == (Result.PUBLISHED, Result.DUPLICATE)
        assert again.entry_id == first.entry_id


async def test_redis_down_at_start_the_engine_waits_and_then_sends_every_signal(
    monitor_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port)
    url = f"redis://127.0.0.1:{port}/0"
    settings = monitor_settings(REDIS_URL=url, WATCHLIST_FILE=sample_watchlist(tmp_path))
    names = StreamNames(settings.runtime.stream_prefix)
    try:
        async with serve(build_app(settings)) as hook, httpx.AsyncClient(base_url=hook.base) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert hook.service.engine is not None
            assert not hook.service.engine.done.is_set()  # holding its first signal, not skipping it
            assert await asyncio.to_thread(server.start) == url
            await eventually(lambda: replay_finished(hook.service), timeout=40, what="replay finished")
            assert (await client.get("/readyz")).status_code == 200
            redis = create_redis(url)
            try:
                published = await events(redis, names.signals)
            finally:
                await redis.aclose()
    finally:
        await asyncio.to_thread(server.stop)
    expected = predict_sample_signals()
    want = per_entry([{"symbol": s, "strategy": k, "side": d, "price": p} for s, k, _, d, p in expected])
    assert per_entry(published) == want


async def test_stop_in_the_middle_of_a_paced_replay_ends_the_service(
    monitor_settings: Callable[..., Settings], tmp_path: Path, redis: Redis, names: StreamNames
) -> None:
    settings = monitor_settings(WATCHLIST_FILE=sample_watchlist(tmp_path, speed=600))
    service = build_app(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await eventually(lambda: events(redis, names.signals), what="a first paced signal")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert service.engine is not None and service.engine.done.is_set()
    stats = service.engine.stats.values()
    assert all(s.finished for s in stats)
    assert sum(s.candles for s in stats) < 900  # stopped long before the 900 candles' end
    published = await events(redis, names.signals)
    assert sum(s.published for s in stats) == len(published)
