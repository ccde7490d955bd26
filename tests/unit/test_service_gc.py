"""A service process collects cyclic garbage at its own thresholds, not Python's default."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from shared.service import GC_THRESHOLDS, run_service


@pytest.fixture(autouse=True)
def _restore_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_a_service_runs_with_the_service_gc_thresholds() -> None:
    seen: list[tuple[int, int, int]] = []

    async def main(stop: asyncio.Event) -> None:
        seen.append(gc.get_threshold())

    gc.set_threshold(700, 10, 10)
    run_service(main)

    assert seen == [GC_THRESHOLDS]
    assert GC_THRESHOLDS[0] > 700
