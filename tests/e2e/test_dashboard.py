"""The dashboard in a real headless Chromium against `intentflow run diagnostics` as its own process."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.embedded import free_port
from tests.support.eventually import wait_sync
from tests.support.plant import HOUR, Plant
from tests.support.procs import intentflow, services

TOKEN = "wall-" + uuid.uuid4().hex
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium package (apt-get install -y chromium)"
)


def chromium(url: str, profile: Path, *extra: str) -> str:
    """Load url in headless Chromium, let its scripts run for 5 s of virtual time, return stdout."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def verdict(dom: str) -> str:
    found = re.search(r'<div id="verdict"[^>]*>([^<]*)</div>', dom)
    return found.group(1).strip() if found else ""


def violation_ids(dom: str) -> set[str]:
    body = re.search(r'<tbody id="violations">(.*?)</tbody>', dom, re.S)
    return set(re.findall(r'data-signal-id="([^"]+)"', unescape(body.group(1)))) if body else set()


@pytest.fixture
def dashboard_url(service_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**service_env, "DIAGNOSTICS_PORT": str(port), "DIAGNOSTICS_TOKEN": TOKEN}
    with services([("diagnostics", intentflow("run", "diagnostics"))], env, tmp_path / "logs") as procs:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(base + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return not procs["diagnostics"].alive()

        wait_sync(up, what="diagnostics up")
        assert procs["diagnostics"].alive(), procs["diagnostics"].output()
        yield f"{base}/?token={TOKEN}"


async def test_dashboard_shows_fail_with_the_violation_then_pass_once_repaired(
    dashboard_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    plant = Plant(pool)
    await plant.signal("ORDER_PLACED")
    await plant.signal("ORDER_FAILED")
    lost = uuid.uuid4()
    await plant.message(lost, ago=HOUR, symbol="ETH_USDT")

    failing = wait_sync(
        lambda: chromium(dashboard_url, tmp_path / "profile-1", "--dump-dom"),
        until=lambda dom: verdict(dom) == "FAIL",
        timeout=60,
        what="dashboard showing FAIL",
    )
    assert violation_ids(failing) == {str(lost)}
    assert "1 violation among 3 signals in the last 12 h" in failing
    assert re.search(r'id="count-missing_intent"><b>1</b>', failing)

    shot = tmp_path / "dashboard.png"
    chromium(
        dashboard_url,
        tmp_path / "profile-2",
        "--hide-scrollbars",
        "--window-size=1600,1000",
        f"--screenshot={shot}",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    await plant.intent(signal_id=lost, decided_ago=HOUR, symbol="ETH_USDT")
    passing = wait_sync(
        lambda: chromium(dashboard_url, tmp_path / "profile-3", "--dump-dom"),
        until=lambda dom: verdict(dom) == "PASS",
        timeout=60,
        what="dashboard showing PASS",
    )
    assert violation_ids(passing) == set()
    assert str(lost) in passing  # still listed among the recent signals, now with its intent
    assert "3 signals in the last 12 h, every one decided" in passing


def test_dashboard_without_the_token_asks_for_it(dashboard_url: str, tmp_path: Path) -> None:
    bare = dashboard_url.split("?")[0]
    dom = chromium(bare, tmp_path / "profile", "--dump-dom")
    assert 'name="token"' in dom and 'id="verdict"' not in dom
