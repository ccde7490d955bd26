"""The bench's service steps on real servers: the Telegram burst's signals through a running
signal monitor's webhook, and the diagnostics service timed as its own process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from services.signal_monitor.app import build_app
from shared.settings import Settings
from shared.streams import StreamNames
from tests.bench.bench_diagnostics import serve_and_time
from tests.bench.bench_telegram import UNHELD, burst_entries, post_to_webhook, webhook_body
from tests.integration import test_webhook
from tests.integration.test_webhook import SECRET, serve
from tests.support.pipeline import events
from tests.support.plant import HOUR, Plant

monitor_settings = test_webhook.monitor_settings  # Settings for this test's prefix


def test_a_burst_entry_becomes_the_contract_body_with_its_own_signal_id() -> None:
    entry = burst_entries(5)[4]  # the fifth: a SELL of a symbol the paper account never holds
    event = json.loads(entry["event"])
    assert webhook_body(entry, "s3cret") == {
        "signal_id": event["signal_id"],
        "symbol": UNHELD,
        "side": "SELL",
        "price": "50000",
        "strategy": event["strategy"],
        "secret": "s3cret",
    }


async def test_the_burst_is_published_through_the_webhook_one_entry_per_signal(
    monitor_settings: Callable[..., Settings], redis: Redis, names: StreamNames
) -> None:
    entries = burst_entries(25)
    async with serve(build_app(monitor_settings(WEBHOOK_SECRET=SECRET))) as hook:
        await post_to_webhook(f"{hook.base}/webhook", SECRET, entries)
        with pytest.raises(RuntimeError, match="answered 401"):
            await post_to_webhook(f"{hook.base}/webhook", "not the secret", burst_entries(1))
    published = await events(redis, names.signals)
    sent = [json.loads(e["event"]) for e in entries]
    assert sorted(e["signal_id"] for e in published) == sorted(s["signal_id"] for s in sent)
    assert sum(e["symbol"] == UNHELD and e["side"] == "SELL" for e in published) == 5
    assert {e["source"] for e in published} == {"webhook"}


async def test_the_diagnostics_service_is_timed_over_http_with_its_memory(
    database_url: str, redis_url: str, prefix: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    plant = Plant(pool)
    for status in ("ORDER_PLACED", "ORDER_FAILED", "DEDUP_SKIPPED"):
        await plant.signal(status)
    await plant.signal("ORDER_PLACED", ago=20 * HOUR)  # outside 12 h, inside 168 h
    # The bench runs it outside any event loop (it starts its own): here, on a thread.
    served = await asyncio.to_thread(serve_and_time, database_url, redis_url, tmp_path, prefix=prefix)
    assert served["http_signals_in_12h"] == 3
    assert served["diagnostics_http_ms"] > 0 and served["diagnostics_http_ms_168h"] > 0
    rss = served["rss"]
    assert rss["samples"] >= 1 and rss["peak_mb"] >= rss["start"] > 0
    assert isinstance(rss["flat"], bool)
