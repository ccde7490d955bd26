"""`intentflow dead-letter list|replay` as a process against real Redis, with a real orchestrator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
from redis.asyncio import Redis

from services.orchestrator.app import build_app
from shared.consumer import Delivery, StreamConsumer
from shared.events import SignalEmitted
from shared.settings import ConsumerSettings
from shared.streams import GROUP_ORCHESTRATOR, StreamNames
from tests.support.eventually import eventually
from tests.support.pipeline import running, signal, xadd
from tests.support.procs import run_cli


async def cli(env: dict[str, str], *args: str) -> Any:
    return await asyncio.to_thread(run_cli, "dead-letter", *args, env=env)


async def fail_every_entry(
    redis: Redis, names: StreamNames, settings: ConsumerSettings
) -> StreamConsumer[Any]:
    """A consumer of the orchestrator group whose handler always fails (the bug to be fixed)."""

    async def broken(batch: list[Delivery[SignalEmitted]]) -> None:
        raise ValueError("bug: cannot size the order")

    return StreamConsumer(
        redis,
        stream=names.signals,
        group=GROUP_ORCHESTRATOR,
        model=SignalEmitted,
        handler=broken,
        dead_letter=names.dead_letter,
        settings=settings,
        name="broken-orchestrator",
    )


async def listed(env: dict[str, str]) -> list[dict[str, Any]]:
    done = await cli(env, "list", "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_list_then_replay_after_a_fix_is_processed_once(
    service_env, make_settings, redis: Redis, names: StreamNames, pool: asyncpg.Pool
) -> None:
    settings = make_settings(CLAIM_IDLE_MS=100, MAX_DELIVERIES=2, CONSUMER_BLOCK_MS=50)
    sig = signal()
    await xadd(redis, names.signals, sig)
    poison_id = str(await redis.xadd(names.signals, {"type": "SignalEmitted", "event": '{"side": "HOLD"}'}))

    broken = await fail_every_entry(redis, names, settings.consumer)
    stop = asyncio.Event()
    task = asyncio.create_task(broken.run(stop))
    try:
        letters = await eventually(lambda: listed(service_env), until=lambda ls: len(ls) == 2, timeout=30)
    finally:
        stop.set()
        await task
    by_signal = {x.get("signal_id"): x for x in letters}
    failed = by_signal[str(sig.signal_id)]
    assert failed["error"].startswith("delivered 2 times") and failed["deliveries"] == 2
    poison = next(x for x in letters if x["entry_id"] == poison_id)
    assert "invalid SignalEmitted" in poison["error"] and "side" in poison["error"]

    human = await cli(service_env, "list", "--count", "1")
    assert human.returncode == 0 and len(human.stdout.splitlines()) == 1

    refused = await cli(service_env, "replay", poison["id"])
    assert refused.returncode == 1 and "still not a valid SignalEmitted" in refused.stderr
    missing = await cli(service_env, "replay", "1-1")
    assert missing.returncode == 1 and "no entry 1-1" in missing.stderr

    # The fix: the real orchestrator now consumes the group.
    async with running(build_app(settings)):
        replayed = await cli(service_env, "replay", failed["id"])
        assert replayed.returncode == 0, replayed.stderr
        new_id = replayed.stdout.strip()
        assert new_id != failed["entry_id"]

        async def intents() -> list[Any]:
            return await pool.fetch("SELECT status FROM order_intents WHERE signal_id = $1", sig.signal_id)

        rows = await eventually(intents, until=lambda r: bool(r) and r[0]["status"] != "PENDING", timeout=30)
        assert [r["status"] for r in rows] == ["ORDER_PLACED"]
        again = await cli(service_env, "replay", failed["id"])
        assert again.returncode == 1 and "already replayed" in again.stderr

        # The same signal dead-lettered once more (as by a second group) and replayed: still one of each.
        await broken.send_to_dead_letter(
            [(new_id, {"type": "SignalEmitted", "event": sig.to_json()}, "test", 1)], asyncio.Event()
        )
        second = next(x for x in await listed(service_env) if x["entry_id"] == new_id)
        assert (await cli(service_env, "replay", second["id"])).returncode == 0

        async def drained() -> int:
            info = await redis.xinfo_groups(names.signals)
            group = next(g for g in info if g["name"] == GROUP_ORCHESTRATOR)
            return int(group["pending"]) + int(group.get("lag") or 0)

        await eventually(drained, until=lambda n: n == 0, timeout=30)
    assert [r["status"] for r in await intents()] == ["ORDER_PLACED"]
    assert await pool.fetchval("SELECT count(*) FROM paper_orders") == 1
    assert [x["entry_id"] for x in await listed(service_env)] == [poison_id]
