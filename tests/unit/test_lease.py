"""A batch's lease: renewed on a timer while in hand, one renewal at a time, nothing after its end."""

from __future__ import annotations

import asyncio

from shared.consumer import _Lease


async def test_a_lease_renews_every_interval_one_at_a_time_until_it_ends() -> None:
    calls: list[float] = []
    running = 0
    most = 0

    async def renew(ids: list[str]) -> None:
        nonlocal running, most
        assert ids == ["1-0", "2-0"]
        calls.append(asyncio.get_running_loop().time())
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.05)  # slower than the interval: the next tick must not overlap it
        finally:
            running -= 1

    lease = _Lease(renew, ["1-0", "2-0"], every=0.02)
    await asyncio.sleep(0.4)
    assert len(calls) >= 3 and most == 1
    lease.end()
    await asyncio.sleep(0.01)
    assert running == 0  # the renewal in progress was cancelled
    ended_with = len(calls)
    await asyncio.sleep(0.1)
    assert len(calls) == ended_with


async def test_a_lease_ended_before_its_interval_never_renews() -> None:
    calls = 0

    async def renew(ids: list[str]) -> None:
        nonlocal calls
        calls += 1

    _Lease(renew, ["1-0"], every=0.02).end()
    await asyncio.sleep(0.06)
    assert calls == 0
