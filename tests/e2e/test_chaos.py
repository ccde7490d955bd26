"""The chaos suite's short form (a few hundred signals per scenario), run by `make test` and CI.

The full form is `make chaos` (tests/bench/chaos.py); both deploy every service as an OS
process on this run's own append-only Redis and PostgreSQL, inject one fault per scenario
while publishing through the webhook, and count what came out once the pipeline is quiet.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bench.chaos import SCENARIOS, SHORT, ChaosServers, Figures, run_scenario, table


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    # Outside pytest's 0700 tmp root: as root the embedded PostgreSQL runs as another user.
    path = Path(tempfile.mkdtemp(prefix="intentflow-chaos-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def chaos_servers(work: Path) -> Iterator[ChaosServers]:
    servers = ChaosServers(work / "servers")
    servers.start()
    yield servers
    servers.stop()


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_scenario_loses_nothing_and_does_nothing_twice(
    scenario: str, chaos_servers: ChaosServers, work: Path
) -> None:
    # The fixtures may have left the servers stopped only if a scenario crashed mid-fault.
    await asyncio.to_thread(chaos_servers.start)
    figures: Figures = await run_scenario(scenario, chaos_servers, SHORT, work)
    assert figures.published == SHORT.signals
    assert figures.ok, f"\n{table([figures])}\n" + "\n".join(figures.problems)


async def test_redis_restarted_without_its_data_every_service_recovers(
    service_env, sandbox, tmp_path, pool
) -> None:
    """Redis comes back empty (no AOF): streams and groups are gone. Every service stays up,
    reports not-ready meanwhile (webhook 503, diagnostics /readyz 503), recreates its groups and
    handles what is published afterwards."""
    import httpx

    from shared.embedded import EmbeddedRedis, free_port
    from tests.e2e.test_shutdown import READY_LOGS, full_env, sigterm_exit_code, start
    from tests.support.eventually import eventually
    from tests.support.procs import await_log

    root = Path(tempfile.mkdtemp(prefix="intentflow-nodata-"))
    os.chmod(root, 0o755)
    server = EmbeddedRedis(root, appendonly=False, port=free_port())
    await asyncio.to_thread(server.start)
    env = {**full_env(service_env, sandbox.url), "REDIS_URL": server.url, "CLAIM_IDLE_MS": "1000"}
    webhook = f"http://127.0.0.1:{env['WEBHOOK_PORT']}"
    diagnostics = f"http://127.0.0.1:{env['DIAGNOSTICS_PORT']}"
    procs = {service: start(service, env, tmp_path / "logs") for service in READY_LOGS}
    try:
        for service, proc in procs.items():
            await await_log(proc, READY_LOGS[service], timeout=60)
        async with httpx.AsyncClient(timeout=10) as http:

            async def post(strategy: str) -> int:
                body = {
                    "secret": env["WEBHOOK_SECRET"],
                    "symbol": "BTC_USDT",
                    "side": "BUY",
                    "price": "100",
                    "strategy": strategy,
                }
                return (await http.post(f"{webhook}/webhook", json=body)).status_code

            async def decided() -> int:
                return int(
                    await pool.fetchval("SELECT count(*) FROM order_intents WHERE status <> 'PENDING'")
                )

            async def announced() -> int:
                return int(
                    await pool.fetchval("SELECT count(*) FROM telegram_messages WHERE kind = 'SIGNAL'")
                )

            async def ready(url: str) -> int:
                try:
                    return (await http.get(url)).status_code
                except httpx.HTTPError:
                    return 0

            assert [await post(f"nodata.before.{i}") for i in range(3)] == [202] * 3
            await eventually(decided, until=lambda n: n == 3, timeout=30)
            # What is in Redis when it loses its data is lost with it: let it all be consumed first.
            await eventually(announced, until=lambda n: n == 3, timeout=30)
            await asyncio.to_thread(server.stop)
            assert await post("nodata.during") == 503
            await eventually(lambda: ready(f"{diagnostics}/readyz"), until=lambda c: c == 503, timeout=30)
            await eventually(lambda: ready(f"{webhook}/readyz"), until=lambda c: c == 503, timeout=30)

            await asyncio.to_thread(server.start)  # empty: no AOF, no snapshot
            await eventually(lambda: ready(f"{diagnostics}/readyz"), until=lambda c: c == 200, timeout=30)
            assert [await post(f"nodata.after.{i}") for i in range(3)] == [202] * 3
            await eventually(decided, until=lambda n: n == 6, timeout=60, what="signals after the restart")
            await eventually(announced, until=lambda n: n == 6, timeout=60, what="their messages")
        for service, proc in procs.items():
            assert proc.alive(), f"{service} exited:\n{proc.output()[-3000:]}"
    finally:
        codes = {s: await asyncio.to_thread(sigterm_exit_code, p) for s, p in procs.items() if p.alive()}
        await asyncio.to_thread(server.stop)
        shutil.rmtree(root, ignore_errors=True)
    assert codes == dict.fromkeys(codes, 0)


async def test_a_sigkilled_orchestrators_batch_is_claimed_and_its_name_removed(
    service_env, sandbox, tmp_path, redis, names, pool
) -> None:
    from shared.streams import GROUP_ORCHESTRATOR
    from tests.e2e.test_shutdown import READY_LOGS, full_env, sigterm_exit_code, start
    from tests.support.eventually import eventually
    from tests.support.pipeline import signal, xadd
    from tests.support.procs import await_log

    env = {
        **full_env(service_env, sandbox.url),
        "CONSUMER_BATCH_SIZE": "50",
        "ORCHESTRATOR_BATCH_SIZE": "50",
        "CLAIM_IDLE_MS": "1000",
    }
    sigs = [signal() for _ in range(400)]
    victim = start("orchestrator", env, tmp_path / "logs")
    await await_log(victim, READY_LOGS["orchestrator"], timeout=60)

    async def decided() -> int:
        return int(await pool.fetchval("SELECT count(*) FROM order_intents WHERE status <> 'PENDING'"))

    async def waiting_on_a_key() -> int:
        return int(
            await pool.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )

    # The last signal's dedup key is held elsewhere (its lock id: hashtextextended of symbol,
    # side and strategy joined by U+001F), so the batch that holds it is in the victim's hand,
    # waiting for its key, when the victim is killed; the others may all be decided by then:
    # it drains 400 signals faster than a test can look.
    async with pool.acquire() as holder:
        await holder.execute("BEGIN")
        await holder.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            "\x1f".join((sigs[-1].symbol, sigs[-1].side.value, sigs[-1].strategy)),
        )
        for sig in sigs:
            await xadd(redis, names.signals, sig)
        await eventually(decided, until=lambda n: n > 0, timeout=30)
        await eventually(
            waiting_on_a_key, until=lambda n: n > 0, timeout=30, what="a batch waiting on its key"
        )
        victim.kill()
        held: Any = await redis.xpending(names.signals, GROUP_ORCHESTRATOR)
        assert held["pending"] > 0, "the victim was killed between batches; nothing in hand to claim"
        (dead_name,) = [c["name"] for c in held["consumers"]]
        await holder.execute("COMMIT")

    heir = start("orchestrator", env, tmp_path / "logs")
    try:
        await eventually(decided, until=lambda n: n == len(sigs), timeout=90, what="every signal decided")

        async def consumers() -> list[str]:
            return [c["name"] for c in await redis.xinfo_consumers(names.signals, GROUP_ORCHESTRATOR)]

        await eventually(consumers, until=lambda cs: dead_name not in cs and len(cs) == 1, timeout=30)
        assert "claimed idle entries" in heir.output()
    finally:
        assert await asyncio.to_thread(sigterm_exit_code, heir) == 0
    assert await pool.fetchval("SELECT count(DISTINCT signal_id) FROM order_intents") == len(sigs)
    assert await pool.fetchval("SELECT count(*) FROM paper_orders") == len(sigs)
    assert await redis.xlen(names.dead_letter) == 0
