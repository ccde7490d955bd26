"""`intentflow up` as a user runs it: a fresh data dir, nothing configured, then signals, verify,
a stop and a start that keeps the data, and a killed child that `up` brings back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil
import pytest

from shared.embedded import discovery_path, free_port, read_discovery
from shared.settings import known_variables
from tests.support.eventually import eventually, wait_sync
from tests.support.procs import Proc, intentflow, run_cli, wait_for_log
from tests.support.sandbox import received

START_TIMEOUT = 120.0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: as root the embedded PostgreSQL runs as an unprivileged
    # user that must traverse every parent, and each new pytest session (another one running
    # beside this) resets /tmp/pytest-of-<user> to 0700.
    path = Path(tempfile.mkdtemp(prefix="intentflow-up-e2e-"))
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def up_env(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a newcomer's shell: no setting at all, free ports, a fresh data dir."""
    for name in known_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    return {
        "INTENTFLOW_DATA_DIR": str(data_dir),
        "DIAGNOSTICS_PORT": str(free_port()),
        "WEBHOOK_PORT": str(free_port()),
        "TELEGRAM_SANDBOX_PORT": str(free_port()),
        "CLAIM_IDLE_MS": "2000",
        "CONSUMER_BLOCK_MS": "200",
    }


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants_and_servers(up: Proc, data_dir: Path) -> set[int]:
    pids = {p.pid for p in psutil.Process(up.pid).children(recursive=True)}
    postmaster = data_dir / "postgres" / "postmaster.pid"
    if postmaster.exists():  # pg_ctl daemonizes the postmaster: it is nobody's child
        pids.add(int(postmaster.read_text().split("\n", 1)[0]))
    return pids


def _child_pid(up: Proc, service: str) -> int | None:
    for child in psutil.Process(up.pid).children():
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if cmdline[-2:] == ["run", service] and child.status() != psutil.STATUS_ZOMBIE:
            return child.pid
    return None


@contextmanager
def running_up(env: dict[str, str], log: Path, *args: str) -> Iterator[Proc]:
    """Start `intentflow up`, wait until its consumers and dashboard are ready; SIGTERM it at the end."""
    up = Proc(intentflow("up", *args), env, log).start()
    try:
        for line in ("[BOOT] order_intents table OK", "notifier consuming", "ready: dashboard at"):
            wait_for_log(up, line, timeout=START_TIMEOUT)
        yield up
    finally:
        if up.alive():
            up.terminate(timeout=40)


def stop_cleanly(up: Proc, data_dir: Path) -> None:
    """SIGTERM `up`: it exits 0 and leaves no process and no discovery record behind."""
    pids = _descendants_and_servers(up, data_dir)
    assert len(pids) >= 6, f"expected the sandbox, the services, redis and postgres; got {pids}"
    assert up.terminate(timeout=40) == 0, up.output()[-4000:]
    wait_sync(lambda: {p for p in pids if _alive(p)}, until=lambda left: not left, what="no leftovers")
    assert not discovery_path(data_dir).exists()
    assert up.output().rstrip().endswith("stopped")


async def _db(data_dir: Path) -> asyncpg.Connection:
    found = read_discovery(data_dir)
    assert found is not None, "`up` recorded no servers in the data dir"
    return await asyncpg.connect(found.database_url)


def publish(env: dict[str, str], side: str, symbol: str, price: str) -> str:
    done = run_cli(
        "publish", side, symbol, "--price", price, "--strategy", f"e2e:{uuid.uuid4().hex[:6]}", env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def _decided(data_dir: Path, signal_ids: list[str]) -> dict[str, tuple[str, int, int]]:
    """Per signal: its intent status, its SIGNAL messages with a decision, its ORDER_FAILED messages."""
    conn = await _db(data_dir)
    try:
        rows = await conn.fetch(
            """
            SELECT s.id::text AS signal_id, i.status,
                   (SELECT count(*) FROM telegram_messages m WHERE m.signal_id = s.id
                     AND m.kind = 'SIGNAL' AND m.decision_type IS NOT NULL) AS signal_msgs,
                   (SELECT count(*) FROM telegram_messages m WHERE m.signal_id = s.id
                     AND m.kind = 'ORDER_FAILED') AS failed_msgs
            FROM unnest($1::uuid[]) AS s(id) LEFT JOIN order_intents i ON i.signal_id = s.id
            """,
            signal_ids,
        )
    finally:
        await conn.close()
    return {r["signal_id"]: (r["status"], r["signal_msgs"], r["failed_msgs"]) for r in rows}


def _complete(state: dict[str, tuple[str, int, int]]) -> bool:
    return all(
        status not in (None, "PENDING") and msgs == 1 and failed == (status == "ORDER_FAILED")
        for status, msgs, failed in state.values()
    )


def verify(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli("verify", "--grace-seconds", "0", env=env)


def healthcheck(env: dict[str, str], service: str) -> subprocess.CompletedProcess[str]:
    """Run the check compose.yaml gives service's container, beside `up` (same host, same settings)."""
    argv = [sys.executable, "-m", "services.up.healthcheck", service]
    return subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


async def test_up_runs_the_pipeline_and_keeps_its_data_across_a_restart(up_env, tmp_path) -> None:
    data_dir = Path(up_env["INTENTFLOW_DATA_DIR"])
    sandbox = f"http://127.0.0.1:{up_env['TELEGRAM_SANDBOX_PORT']}"
    with running_up(up_env, tmp_path / "up-1.log") as up:
        found = read_discovery(data_dir)
        assert found is not None and found.pid == up.pid
        assert ":6379/" not in found.redis_url and ":5432/" not in found.database_url
        signal_ids = [
            publish(up_env, "BUY", "BTC_USDT", "43210.5"),
            publish(up_env, "SELL", "ETH_USDT", "2500"),  # the paper account holds no ETH: ORDER_FAILED
        ]
        state = await eventually(
            lambda: _decided(data_dir, signal_ids), until=_complete, timeout=60, what="decided and announced"
        )
        assert [state[s][0] for s in signal_ids] == ["ORDER_PLACED", "ORDER_FAILED"]
        texts = [m["text"] for m in await received(sandbox)]
        assert any("BUY SIGNAL" in t for t in texts) and any("ORDER FAILED" in t for t in texts)
        verdict = verify(up_env)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        assert verdict.stdout.startswith("PASS")
        for service in ("orchestrator", "notifier", "diagnostics"):  # the container healthchecks
            health = healthcheck(up_env, service)
            assert health.returncode == 0 and health.stdout.startswith("healthy"), (
                health.stdout + health.stderr
            )
        stop_cleanly(up, data_dir)

    with running_up(up_env, tmp_path / "up-2.log") as up:
        state = await _decided(data_dir, signal_ids)
        assert [state[s] for s in signal_ids] == [("ORDER_PLACED", 1, 0), ("ORDER_FAILED", 1, 1)]
        verdict = verify(up_env)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        assert "2 signals" in verdict.stdout
        stop_cleanly(up, data_dir)


async def _demo_decisions(data_dir: Path) -> list[tuple[str, str]]:
    conn = await _db(data_dir)
    try:
        rows = await conn.fetch(
            """SELECT i.side, i.status FROM order_intents i
               JOIN telegram_messages m ON m.signal_id = i.signal_id AND m.kind = 'SIGNAL'
               WHERE i.strategy NOT LIKE 'e2e:%' AND i.status <> 'PENDING'"""
        )
    finally:
        await conn.close()
    return [(r["side"], r["status"]) for r in rows]


async def test_a_killed_child_is_restarted_and_the_pipeline_catches_up(up_env, tmp_path) -> None:
    # With --demo, as the README's first command runs it: the sample's signals flow meanwhile.
    data_dir = Path(up_env["INTENTFLOW_DATA_DIR"])
    with running_up(up_env, tmp_path / "up.log", "--demo") as up:
        second_up = run_cli("up", env=up_env, timeout=60)
        assert second_up.returncode == 1
        assert f"another `intentflow up` (pid {up.pid})" in second_up.stderr
        first = _child_pid(up, "orchestrator")
        assert first is not None
        os.kill(first, signal.SIGKILL)
        signal_ids = [publish(up_env, "BUY", "BTC_USDT", "43000"), publish(up_env, "BUY", "ETH_USDT", "2400")]
        wait_for_log(up, "orchestrator exited (signal SIGKILL); restarting it", timeout=30)
        second = wait_sync(lambda: _child_pid(up, "orchestrator"), until=lambda p: p not in (None, first))
        await eventually(
            lambda: _decided(data_dir, signal_ids),
            until=_complete,
            timeout=60,
            what="caught up after the kill",
        )
        assert _child_pid(up, "orchestrator") == second
        # The demo's paper account holds BTC and ETH, so the sample's SELL signals fill too.
        await eventually(
            lambda: _demo_decisions(data_dir),
            until=lambda found: ("SELL", "ORDER_PLACED") in found,
            timeout=90,
            what="a demo SELL signal placed and announced",
        )
        verdict = run_cli("verify", env=up_env)  # default grace: demo signals keep arriving
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        stop_cleanly(up, data_dir)

    # A second `up --demo` on the same data dir replays the sample from its start again.
    restarted_at = datetime.now(UTC)
    with running_up(up_env, tmp_path / "up-again.log", "--demo") as up:
        await eventually(
            lambda: _strategy_intents_since(data_dir, restarted_at),
            until=lambda n: n > 0,
            timeout=90,
            what="new demo signals on a second --demo run",
        )
        stop_cleanly(up, data_dir)


async def _strategy_intents_since(data_dir: Path, since: datetime) -> int:
    conn = await _db(data_dir)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM order_intents WHERE source = 'strategy' AND created_at > $1", since
            )
        )
    finally:
        await conn.close()
