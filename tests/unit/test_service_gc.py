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
    gc.unfreeze()


def test_a_service_runs_with_the_service_gc_thresholds() -> None:
    seen: list[tuple[int, int, int]] = []

    async def main(stop: asyncio.Event) -> None:
        seen.append(gc.get_threshold())

    gc.set_threshold(700, 10, 10)
    run_service(main)

    assert seen == [GC_THRESHOLDS]
    assert GC_THRESHOLDS[0] > 700


def test_a_service_leaves_what_its_start_made_out_of_full_collections() -> None:
    frozen: list[int] = []

    async def main(stop: asyncio.Event) -> None:
        frozen.append(gc.get_freeze_count())  # the objects full collections no longer walk

    gc.unfreeze()
    run_service(main)
    assert frozen and frozen[0] > 1000
