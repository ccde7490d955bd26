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
