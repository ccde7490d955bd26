"""Wait on a condition instead of sleeping: poll until it holds or a deadline passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], bool] = bool,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Await probe() until until(result) holds; raise AssertionError with the last value on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = await probe()
        if until(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s; last value: {last!r:.2000}")
        await asyncio.sleep(interval)


def wait_sync(
    probe: Callable[[], T],
    *,
    until: Callable[[T], bool] = bool,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call probe() until until(result) holds; the blocking twin of eventually()."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if until(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s; last value: {last!r:.2000}")
        time.sleep(interval)
