"""Live mode through ccxt to a local exchange stand-in: one order per intent, even across SIGKILL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from services.orchestrator.decide import intent_id_for
from services.orchestrator.exchanges.base import client_order_id
from shared.db import create_pool
from shared.redis import create_redis
from shared.streams import StreamNames
from tests.support.eventually import eventually
from tests.support.exchange_standin import ExchangeStandin
from tests.support.pipeline import signal, xadd
from tests.support.procs import Proc, await_log, intentflow, run_cli


@pytest.fixture
async def standin() -> AsyncIterator[ExchangeStandin]:
    server = ExchangeStandin(
        balances={"USDT": Decimal("10000"), "BTC": Decimal("1")}, api_key="live-key-1234"
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def live_env(service_env, standin) -> dict[str, str]:
    return {
        **service_env,
        "TRADING_MODE": "live",
        "EXCHANGE": "binance",
        "EXCHANGE_API_KEY": "live-key-1234",
        "EXCHANGE_SECRET": "live-secret-5678",
        "EXCHANGE_API_URL": standin.url,
    }


async def test_sigkill_between_order_and_answer_still_one_order(live_env, standin, tmp_path, prefix) -> None:
    sig = signal(symbol="BTC_USDT", price="50000")
    coid = client_order_id(intent_id_for(sig.signal_id))
    standin.inject("accept_then_timeout", delay=60)
    proc = Proc(intentflow("run", "orchestrator"), live_env, tmp_path / "orchestrator.log").start()
    redis = create_redis(live_env["REDIS_URL"])
    pool = await create_pool(live_env["DATABASE_URL"])
    try:
        await await_log(proc, "[BOOT] order_intents table OK")
        await xadd(redis, StreamNames(prefix).signals, sig)
        await eventually(
            lambda: _orders(standin, coid), until=lambda n: n == 1, what="the order at the exchange"
        )
        status = await pool.fetchval("SELECT status FROM order_intents WHERE signal_id = $1", sig.signal_id)
        assert status == "PENDING"
        proc.kill()
        standin.clear_faults()
        proc.start()
        row = await eventually(
            lambda: pool.fetchrow("SELECT * FROM order_intents WHERE signal_id = $1", sig.signal_id),
            until=lambda r: r is not None and r["status"] != "PENDING",
            timeout=60,
            what="the intent decided after restart",
        )
        assert row["status"] == "ORDER_PLACED"
        assert row["exchange_order_id"] == str(standin.orders_for(coid)[0].order_id)
        assert len(standin.orders_for(coid)) == 1
        assert len(standin.orders) == 1
    finally:
        code = proc.terminate()
        await pool.close()
        await redis.aclose()
    assert code == 0, proc.output()[-3000:]
    assert "live-secret-5678" not in proc.output()


async def _orders(standin: ExchangeStandin, coid: str) -> int:
    return len(standin.orders_for(coid))


@pytest.mark.parametrize("missing", ["EXCHANGE_API_KEY", "EXCHANGE_SECRET", "EXCHANGE"])
def test_live_mode_without_credentials_refuses_to_start_naming_the_variable(live_env, missing) -> None:
    env = {**live_env, missing: ""}
    result = run_cli("run", "orchestrator", env=env, timeout=60)
    assert result.returncode != 0
    assert missing in result.stderr


async def test_live_mode_logs_the_exchange_and_account_without_secrets(live_env, tmp_path) -> None:
    proc = Proc(intentflow("run", "orchestrator"), live_env, tmp_path / "o.log").start()
    try:
        await await_log(proc, "live exchange ready")
    finally:
        assert proc.terminate() == 0
    out = proc.output()
    assert "binance" in out and "live" in out
    assert "live-secret-5678" not in out and "live-key-1234" not in out
