"""Orchestrators as OS processes (as compose runs them): racing on one group, the dedup holds."""

from __future__ import annotations

import asyncio
import json
import uuid

from services.orchestrator.decide import intent_id_for
from shared.db import create_pool
from shared.redis import create_redis
from shared.streams import StreamNames
from tests.support.eventually import eventually
from tests.support.pipeline import signal
from tests.support.procs import intentflow, run_cli, services, wait_for_log


async def test_three_orchestrators_fifty_duplicates_one_intent_placed(service_env, tmp_path, prefix) -> None:
    names = StreamNames(prefix)
    specs = [(f"orchestrator-{i}", intentflow("run", "orchestrator")) for i in range(3)]
    with services(specs, service_env, tmp_path / "logs") as procs:
        for proc in procs.values():
            wait_for_log(proc, "[BOOT] order_intents table OK")
        redis = create_redis(service_env["REDIS_URL"])
        pool = await create_pool(service_env["DATABASE_URL"])
        try:
            # A race of three: each orchestrator blocked in its XREADGROUP before the signals
            # arrive, so Redis hands the first entries to all three (a slow starter would
            # otherwise find the fifty decided within milliseconds by the other two).
            async def blocked_readers() -> int:
                clients = await redis.client_list()
                return sum(1 for c in clients if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))

            await eventually(
                blocked_readers, until=lambda n: n >= 3, timeout=60, what="three blocked readers"
            )
            strategy = f"race:{uuid.uuid4().hex[:8]}"
            sigs = [signal(strategy=strategy, price=str(50000 + i)) for i in range(50)]
            async with redis.pipeline(transaction=False) as pipe:
                for sig in sigs:
                    pipe.xadd(names.signals, {"type": "SignalEmitted", "event": sig.to_json()})
                await pipe.execute()

            async def decided() -> int:
                return await pool.fetchval("SELECT count(*) FROM order_intents WHERE status <> 'PENDING'")

            await eventually(decided, until=lambda n: n == 50, timeout=60, what="50 decided intents")
            rows = await pool.fetch("SELECT signal_id, status FROM order_intents")
            statuses = [r["status"] for r in rows]
            assert statuses.count("ORDER_PLACED") == 1
            assert statuses.count("DEDUP_SKIPPED") == 49
            assert {r["signal_id"] for r in rows} == {s.signal_id for s in sigs}
            assert await pool.fetchval("SELECT count(*) FROM paper_orders") == 1
            consumers = await redis.xinfo_consumers(names.signals, "orchestrator")
            assert len(consumers) == 3
        finally:
            await pool.close()
            await redis.aclose()
    for proc in procs.values():
        assert "Traceback" not in proc.output()


async def test_publish_validates_and_exits_2_naming_the_field(service_env) -> None:
    bad = run_cli("publish", "HOLD", "BTC_USDT", "--price", "1", env=service_env)
    assert bad.returncode == 2
    assert "side" in bad.stderr
    bad_price = run_cli("publish", "BUY", "btc", "--price", "-1", env=service_env)
    assert bad_price.returncode == 2
    assert "symbol" in bad_price.stderr and "price" in bad_price.stderr


async def test_publish_then_orchestrator_then_tail(service_env, tmp_path, prefix) -> None:
    signal_id = str(uuid.uuid4())
    published = run_cli(
        "publish",
        "BUY",
        "ETH_USDT",
        "--price",
        "3000",
        "--strategy",
        "manual:e2e",
        "--signal-id",
        signal_id,
        env=service_env,
    )
    assert published.returncode == 0, published.stderr
    assert published.stdout.strip() == signal_id
    again = run_cli(
        "publish", "BUY", "ETH_USDT", "--price", "3000", "--signal-id", signal_id, env=service_env
    )
    assert again.returncode == 0 and "already published" in again.stderr
    with services(
        [("orchestrator", intentflow("run", "orchestrator"))], service_env, tmp_path / "logs"
    ) as procs:
        tailed = await asyncio.to_thread(
            run_cli, "tail", "order-decisions", "--from-start", "--count", "1", env=service_env, timeout=60
        )
    assert tailed.returncode == 0, tailed.stderr
    line = json.loads(tailed.stdout.strip().splitlines()[0])
    assert line["event"]["signal_id"] == signal_id
    assert line["event"]["intent_id"] == str(intent_id_for(uuid.UUID(signal_id)))
    assert line["event"]["status"] == "ORDER_PLACED"
    log_lines = [json.loads(x) for x in procs["orchestrator"].output().splitlines() if x.startswith("{")]
    about = [x for x in log_lines if x.get("signal_id") == signal_id]
    assert about and all(x["signal_id"] == signal_id for x in about)
    redis = create_redis(service_env["REDIS_URL"])
    try:
        assert await redis.xlen(StreamNames(prefix).signals) == 1
    finally:
        await redis.aclose()
