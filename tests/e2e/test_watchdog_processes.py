"""The watchdog, the brake and the operator's commands with every service its own OS process.

Two diagnostics processes watch one database: a planted lost signal is still alerted once,
repaired, and RESOLVED once; `intentflow verify` then passes; `intentflow brake` and the
Telegram commands reach the operator's chat through the sandbox.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg

from services.notifier.messages import signal_text
from shared.embedded import free_port
from tests.support.eventually import eventually
from tests.support.ops import containing, say
from tests.support.pipeline import signal
from tests.support.plant import Plant
from tests.support.procs import intentflow, run_cli, services
from tests.support.sandbox import new_token

CHAT = "8181"


async def test_two_diagnostics_alert_once_repair_and_resolve_then_brake_and_status(
    service_env: dict[str, str], pool: asyncpg.Pool, sandbox: Any, tmp_path: Path
) -> None:
    sig = signal(symbol="ETH_USDT", price="2000", ago=30)
    await Plant(pool).message(
        sig.signal_id,
        ago=30,
        text=signal_text(sig),
        symbol=sig.symbol,
        decision=(None, None),
        context={"coalesced": 1, "event": sig.model_dump(mode="json")},
    )
    ports = [free_port(), free_port()]
    env = {
        **service_env,
        "TELEGRAM_BOT_TOKEN": new_token(),
        "TELEGRAM_CHAT_ID": CHAT,
        "TELEGRAM_API_URL": sandbox.url,
        "WATCHDOG_INTERVAL_SECONDS": "0.5",
        "WATCHDOG_GRACE_SECONDS": "1",
    }
    specs = [
        ("orchestrator", intentflow("run", "orchestrator")),
        ("notifier", intentflow("run", "notifier")),
    ]
    with services(specs, env, tmp_path / "logs") as procs:
        diagnostics = [
            services(
                [(f"diagnostics-{i}", intentflow("run", "diagnostics"))],
                {**env, "DIAGNOSTICS_PORT": str(p)},
                tmp_path / "logs",
            )
            for i, p in enumerate(ports)
        ]
        with diagnostics[0] as first, diagnostics[1] as second:
            alert = await eventually(
                lambda: containing(sandbox.url, "INVARIANT VIOLATION", CHAT), timeout=60, what="the alert"
            )
            assert str(sig.signal_id) in alert[0]
            await eventually(lambda: containing(sandbox.url, "RESOLVED", CHAT), timeout=60, what="RESOLVED")
            status = await pool.fetchval(
                "SELECT status FROM order_intents WHERE signal_id = $1", sig.signal_id
            )
            assert status == "ORDER_PLACED"
            url = f"http://127.0.0.1:{ports[1]}"
            verdict = await asyncio.to_thread(
                run_cli, "verify", "--url", url, "--hours", "1", "--grace-seconds", "1", env=env
            )
            assert verdict.returncode == 0, verdict.stdout + verdict.stderr
            logs = first["diagnostics-0"].output() + second["diagnostics-1"].output()
            assert "watchdog repair: re-published the event" in logs and str(sig.signal_id) in logs

            braked = await asyncio.to_thread(
                run_cli, "brake", "on", "--reason", "drill", "--by", "e2e", env=env
            )
            assert braked.returncode == 0, braked.stderr
            await eventually(lambda: containing(sandbox.url, "BRAKE ON", CHAT), what="BRAKE ON announced")
            await say(sandbox.url, CHAT, "/status")
            reply = await eventually(
                lambda: containing(sandbox.url, "STATUS", CHAT), what="the /status reply"
            )
            assert "STATUS PASS" in reply[0] and "brake: ON" in reply[0] and "e2e" in reply[0]
            await say(sandbox.url, CHAT, "/release", from_id=3)
            await eventually(lambda: containing(sandbox.url, "BRAKE OFF", CHAT), what="BRAKE OFF announced")

        assert procs["notifier"].alive() and procs["orchestrator"].alive()
    assert len(await containing(sandbox.url, "INVARIANT VIOLATION")) == 1
    assert len(await containing(sandbox.url, "RESOLVED")) == 1
