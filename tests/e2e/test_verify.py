"""`intentflow verify` against `intentflow run diagnostics` running as its own process: exit 0, 1, 2."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.embedded import free_port
from tests.support.eventually import wait_sync
from tests.support.plant import HOUR, Plant
from tests.support.procs import intentflow, run_cli, services

TOKEN = "verify-" + uuid.uuid4().hex


def answering(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def diagnostics(service_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A diagnostics process with a token; yields its URL and the env verify runs with."""
    port = free_port()
    env = {**service_env, "DIAGNOSTICS_PORT": str(port), "DIAGNOSTICS_TOKEN": TOKEN}
    with services([("diagnostics", intentflow("run", "diagnostics"))], env, tmp_path / "logs") as procs:
        url = f"http://127.0.0.1:{port}"
        wait_sync(lambda: answering(url) or not procs["diagnostics"].alive(), what="diagnostics up")
        assert procs["diagnostics"].alive(), procs["diagnostics"].output()
        yield url, env
        assert TOKEN not in procs["diagnostics"].output()


async def test_verify_exit_codes(diagnostics: tuple[str, dict[str, str]], pool: asyncpg.Pool) -> None:
    url, env = diagnostics
    plant = Plant(pool)
    await plant.signal("ORDER_PLACED")
    await plant.signal("ORDER_FAILED")

    passed = run_cli("verify", "--hours", "12", env=env)  # URL from DIAGNOSTICS_PORT, token from env
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.startswith("PASS: 2 signals in the last 12 h")

    lost = uuid.uuid4()
    await plant.message(lost, ago=HOUR, symbol="ETH_USDT")
    failed = run_cli("verify", "--hours", "12", "--url", url, env=env)
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.startswith("FAIL: 1 violation among 3 signals")
    line = next(ln for ln in failed.stdout.splitlines() if str(lost) in ln)
    assert "missing_intent" in line and "ETH_USDT" in line and "no order intent" in line

    raw = run_cli("verify", "--json", "--grace-seconds", "0", env=env)
    assert raw.returncode == 1
    body = json.loads(raw.stdout)
    assert body["pass"] is False and [v["signal_id"] for v in body["violations"]] == [str(lost)]

    await pool.execute("DELETE FROM telegram_messages WHERE signal_id = $1", lost)
    assert run_cli("verify", "--hours", "12", env=env).returncode == 0


def test_verify_exits_2_when_unreachable_or_refused(
    diagnostics: tuple[str, dict[str, str]], service_env: dict[str, str]
) -> None:
    url, env = diagnostics
    nobody = run_cli("verify", "--url", f"http://127.0.0.1:{free_port()}", env=env)
    assert nobody.returncode == 2 and "cannot be reached" in nobody.stderr

    no_token = {**service_env, "DIAGNOSTICS_URL": url}
    refused = run_cli("verify", env=no_token)
    assert refused.returncode == 2 and "answered 401" in refused.stderr and "--token" in refused.stderr

    given = run_cli("verify", "--token", TOKEN, env=no_token)
    assert given.returncode == 0, given.stderr

    bad_range = run_cli("verify", "--hours", "0", env=env)
    assert bad_range.returncode == 2 and "hours" in bad_range.stderr.lower()


def test_verify_exits_2_when_diagnostics_answers_503(service_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = {
        **service_env,
        "DIAGNOSTICS_PORT": str(port),
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nothing",
    }
    with services([("diagnostics", intentflow("run", "diagnostics"))], env, tmp_path / "logs"):
        wait_sync(lambda: answering(f"http://127.0.0.1:{port}"), what="diagnostics up")
        down = run_cli("verify", env=env)
    assert down.returncode == 2
    assert "answered 503" in down.stderr and "PostgreSQL unavailable" in down.stderr
