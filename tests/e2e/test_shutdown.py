"""SIGTERM on each service as an OS process: stop reading, finish or release the message in hand,
exit 0 within 10 s (contract §6) — idle, with a batch in flight, and with Redis down."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from shared.embedded import EmbeddedRedis, free_port
from shared.streams import GROUP_ORCHESTRATOR, StreamNames, encode_entry
from tests.support.eventually import eventually
from tests.support.pipeline import signal as make_signal
from tests.support.pipeline import xadd
from tests.support.procs import Proc, await_log, intentflow
from tests.support.sandbox import new_token

SHUTDOWN_LIMIT_S = 10.0
READY_LOGS = {
    "orchestrator": "[BOOT] order_intents table OK",
    "notifier": "notifier consuming",
    "signal-monitor": "webhook serving",
    "diagnostics": "diagnostics serving",
}


def full_env(service_env: dict[str, str], sandbox_url: str) -> dict[str, str]:
    return {
        **service_env,
        "TELEGRAM_BOT_TOKEN": new_token(),
        "TELEGRAM_CHAT_ID": "4242",
        "TELEGRAM_API_URL": sandbox_url,
        "WEBHOOK_SECRET": "shutdown-" + uuid.uuid4().hex[:8],
        "WEBHOOK_PORT": str(free_port()),
        "DIAGNOSTICS_PORT": str(free_port()),
        "TELEGRAM_PER_CHAT_PER_S": "1000",
        "TELEGRAM_GLOBAL_PER_S": "1000",
        "PAPER_BALANCES": "USDT=100000000",
    }


def sigterm_exit_code(proc: Proc) -> int:
    """Send one SIGTERM and return the exit code; fail if it takes longer than the contract's 10 s."""
    assert proc.popen is not None and proc.alive(), proc.output()[-3000:]
    proc.popen.send_signal(signal.SIGTERM)
    try:
        return proc.popen.wait(SHUTDOWN_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        proc.popen.wait(5)
        raise AssertionError(
            f"{proc.args[-1]} did not exit within {SHUTDOWN_LIMIT_S}s of SIGTERM:\n{proc.output()[-3000:]}"
        ) from None


def start(service: str, env: dict[str, str], log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    return Proc(intentflow("run", service), env, log_dir / f"{service}-{uuid.uuid4().hex[:4]}.log").start()


@pytest.mark.parametrize("service", list(READY_LOGS))
async def test_sigterm_when_idle_exits_0(service, service_env, sandbox, tmp_path) -> None:
    proc = start(service, full_env(service_env, sandbox.url), tmp_path / "logs")
    await await_log(proc, READY_LOGS[service], timeout=60)
    code = await asyncio.to_thread(sigterm_exit_code, proc)
    assert code == 0, proc.output()[-3000:]
    assert "Traceback" not in proc.output()


@pytest.mark.parametrize("service", ["orchestrator"])
async def test_sigterm_while_starting_exits_0(service, service_env, sandbox, tmp_path) -> None:
    proc = start(service, full_env(service_env, sandbox.url), tmp_path / "logs")
    # As soon as the interpreter runs (the first bytes of our own code are far later).
    await asyncio.sleep(0.2)
    code = await asyncio.to_thread(sigterm_exit_code, proc)
    assert code == 0, proc.output()[-3000:]


async def acked_signal_ids(redis: Redis, names: StreamNames, group: str) -> set[str]:
    """Signal ids of the entries the group has read and acknowledged."""
    groups: Any = await redis.xinfo_groups(names.signals)
    info = next(g for g in groups if g["name"] == group)
    last = info["last-delivered-id"]
    pending: Any = await redis.xpending_range(names.signals, group, min="-", max="+", count=100_000)
    held = {p["message_id"] for p in pending}
    entries: Any = await redis.xrange(names.signals, "-", last)
    return {json.loads(f["event"])["signal_id"] for i, f in entries if i not in held}


async def test_orchestrator_sigterm_mid_batch_acks_only_what_it_committed(
    service_env, sandbox, tmp_path, redis: Redis, names: StreamNames, pool: asyncpg.Pool
) -> None:
    env = {**full_env(service_env, sandbox.url), "CONSUMER_BATCH_SIZE": "50", "ORCHESTRATOR_BATCH_SIZE": "50"}
    sigs = [make_signal() for _ in range(400)]
    first = start("orchestrator", env, tmp_path / "logs")
    await await_log(first, READY_LOGS["orchestrator"], timeout=60)
    # All at once, so the backlog outlasts the first decision however fast the orchestrator is
    # (added one by one, it could keep up and be idle when SIGTERM comes).
    async with redis.pipeline(transaction=False) as pipe:
        for sig in sigs:
            fields: Any = encode_entry(sig)
            pipe.xadd(names.signals, fields)
        await pipe.execute()

    async def decided() -> int:
        return int(await pool.fetchval("SELECT count(*) FROM order_intents WHERE status <> 'PENDING'"))

    await eventually(decided, until=lambda n: n > 0, timeout=30, interval=0.01, what="a first decision")
    code = await asyncio.to_thread(sigterm_exit_code, first)
    assert code == 0, first.output()[-3000:]

    # Every acknowledged entry has its decided intent: nothing was acked before its commit.
    acked = await acked_signal_ids(redis, names, GROUP_ORCHESTRATOR)
    rows = await pool.fetch("SELECT signal_id::text AS sid, status FROM order_intents")
    decided_ids = {r["sid"] for r in rows if r["status"] != "PENDING"}
    assert acked <= decided_ids, f"{len(acked - decided_ids)} entries acknowledged without a decided intent"
    assert len(decided_ids) < len(sigs), "the batch was not in flight: every signal was done before SIGTERM"

    second = start("orchestrator", env, tmp_path / "logs")
    try:
        await eventually(decided, until=lambda n: n == len(sigs), timeout=90, what="every signal decided")
    finally:
        assert await asyncio.to_thread(sigterm_exit_code, second) == 0, second.output()[-3000:]
    rows = await pool.fetch("SELECT signal_id::text AS sid FROM order_intents")
    assert sorted(r["sid"] for r in rows) == sorted(str(s.signal_id) for s in sigs)
    assert await pool.fetchval("SELECT count(*) FROM paper_orders") == len(sigs)


async def test_notifier_sigterm_while_a_send_hangs_exits_0_and_nothing_is_lost(
    service_env, sandbox, tmp_path, redis: Redis, names: StreamNames, pool: asyncpg.Pool
) -> None:
    from services.telegram_sandbox.faults import Fault, FaultKind

    env = full_env(service_env, sandbox.url)
    first = start("notifier", env, tmp_path / "logs")
    await await_log(first, READY_LOGS["notifier"], timeout=60)
    sandbox.state.faults.add(Fault(FaultKind.SLOW, count=1, delay=15.0))
    sigs = [make_signal() for _ in range(5)]
    for sig in sigs:
        await xadd(redis, names.signals, sig)
    await eventually(lambda: _requests(sandbox), until=lambda n: n >= 1, timeout=30, what="a send in hand")
    code = await asyncio.to_thread(sigterm_exit_code, first)
    assert code == 0, first.output()[-3000:]
    # Released, not finished after the signal: nothing was sent once SIGTERM arrived.
    assert "telegram message sent" not in first.output(), first.output()[-3000:]

    second = start("notifier", env, tmp_path / "logs")
    try:
        await await_log(second, READY_LOGS["notifier"], timeout=60)

        async def announced() -> int:
            return int(
                await pool.fetchval(
                    "SELECT count(DISTINCT signal_id) FROM telegram_messages WHERE kind = 'SIGNAL'"
                )
            )

        await eventually(announced, until=lambda n: n == len(sigs), timeout=60, what="every signal announced")
    finally:
        assert await asyncio.to_thread(sigterm_exit_code, second) == 0, second.output()[-3000:]


async def _requests(sandbox: Any) -> int:
    return int(sandbox.state.faults_served["slow"])


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis this test may stop (never the session's)."""
    root = Path(tempfile.mkdtemp(prefix="intentflow-shutdown-"))
    os.chmod(root, 0o755)
    server = EmbeddedRedis(root, appendonly=False, port=free_port())
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


async def test_every_service_exits_0_on_sigterm_while_redis_is_down(
    service_env, sandbox, tmp_path, own_redis: EmbeddedRedis
) -> None:
    env = {**full_env(service_env, sandbox.url), "REDIS_URL": own_redis.url}
    procs = {service: start(service, env, tmp_path / "logs") for service in READY_LOGS}
    for service, proc in procs.items():
        await await_log(proc, READY_LOGS[service], timeout=60)
    await asyncio.to_thread(own_redis.stop)
    # Let each consumer notice and enter its reconnect backoff before the signal.
    await asyncio.gather(
        await_log(procs["orchestrator"], "redis unreachable", timeout=30),
        await_log(procs["notifier"], "redis unreachable", timeout=30),
    )
    codes = await asyncio.gather(*(asyncio.to_thread(sigterm_exit_code, p) for p in procs.values()))
    assert dict(zip(procs, codes, strict=True)) == dict.fromkeys(procs, 0), {
        s: p.output()[-1500:] for s, p in procs.items()
    }
