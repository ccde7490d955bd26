"""Helpers to drive services in-process in integration tests: run, publish, read back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from redis.asyncio import Redis

from shared.events import SignalEmitted
from shared.streams import EVENT_FIELD, encode_entry


class Runnable(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


@contextlib.asynccontextmanager
async def running(app: Runnable) -> AsyncIterator[asyncio.Task[None]]:
    """Run a service app in a task; stop it (as SIGTERM would) and surface its errors on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        yield task
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=15)
        if not done:
            stacks = []
            for other in asyncio.all_tasks():
                if other is not asyncio.current_task():
                    stacks.append(f"{other.get_name()}: {' -> '.join(_await_chain(other.get_coro()))}")
            task.cancel()
            raise TimeoutError("the service did not stop within 15 s of stop; tasks:\n" + "\n".join(stacks))
        task.result()


def _await_chain(coro: Any) -> list[str]:
    """Where a suspended coroutine waits: each frame of its await chain, outermost first."""
    out = []
    while coro is not None:
        frame = (
            getattr(coro, "cr_frame", None)
            or getattr(coro, "gi_frame", None)
            or getattr(coro, "ag_frame", None)
        )
        if frame is not None:
            out.append(
                f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}:{frame.f_lineno}"
            )
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "gi_yieldfrom", None)
            or getattr(coro, "ag_await", None)
        )
    return out


def signal(
    symbol: str = "BTC_USDT",
    side: str = "BUY",
    price: str = "50000",
    strategy: str | None = None,
    *,
    ago: float = 0.0,
    signal_id: uuid.UUID | None = None,
) -> SignalEmitted:
    """A valid signal with a fresh id (and a unique strategy unless one is given)."""
    return SignalEmitted.model_validate(
        {
            "signal_id": signal_id or uuid.uuid4(),
            "symbol": symbol,
            "side": side,
            "price": price,
            "strategy": strategy or f"test:{uuid.uuid4().hex[:8]}",
            "source": "manual",
            "emitted_at": datetime.now(UTC) - timedelta(seconds=ago),
        }
    )


async def xadd(redis: Redis, stream: str, event: SignalEmitted) -> str:
    """Append an event as a raw entry (no publish-once guard), as a redelivery would."""
    fields: Any = encode_entry(event)
    return str(await redis.xadd(stream, fields))


async def events(redis: Redis, stream: str) -> list[dict[str, Any]]:
    """Decode every entry of a stream the way any Redis client can."""
    entries: Any = await redis.xrange(stream, "-", "+")
    return [json.loads(fields[EVENT_FIELD]) for _, fields in entries]


async def group_drained(redis: Redis, stream: str, group: str) -> bool:
    """Tell whether a group has read every entry of a stream and acknowledged them all (Redis ≥ 6.2)."""
    groups = await redis.xinfo_groups(stream)
    info = next((g for g in groups if g["name"] == group), None)
    if info is None or info["pending"] != 0:
        return False
    last = await redis.xrevrange(stream, "+", "-", count=1)
    return not last or info["last-delivered-id"] == last[0][0]
