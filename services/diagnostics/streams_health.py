"""Stream health from Redis: length, and per consumer group its consumers, pending, lag, oldest idle."""

from __future__ import annotations

from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from services.diagnostics.models import GroupHealth, StreamHealth
from shared.streams import GROUPS, StreamNames

# Where Redis reports no lag we count the undelivered entries ourselves, up to this many.
LAG_COUNT_CAP = 10_000


async def _lag(redis: Redis, key: str, group: dict[str, Any]) -> int:
    lag = group.get("lag")
    if lag is not None:
        return int(lag)
    # Redis < 7 has no lag, and Redis 7 answers nil when it cannot tell (a group created
    # at $, entries deleted): count the entries after the group's last delivered id.
    last = str(group.get("last-delivered-id", "0-0"))
    entries = await redis.xrange(key, min=f"({last}", max="+", count=LAG_COUNT_CAP)
    return len(entries or [])


async def _group(redis: Redis, key: str, group: dict[str, Any]) -> GroupHealth:
    name = str(group["name"])
    pending = int(group.get("pending") or 0)
    oldest_idle: int | None = None
    if pending:
        oldest = await redis.xpending_range(key, name, min="-", max="+", count=1)
        if oldest:
            oldest_idle = int(oldest[0]["time_since_delivered"])
    return GroupHealth(
        name=name,
        consumers=int(group.get("consumers") or 0),
        pending=pending,
        lag=await _lag(redis, key, group),
        last_delivered_id=str(group.get("last-delivered-id", "0-0")),
        oldest_pending_idle_ms=oldest_idle,
    )


async def stream_health(redis: Redis, key: str) -> StreamHealth:
    """Describe one stream; a stream that does not exist yet is reported empty."""
    empty = StreamHealth(key=key, exists=False, length=0, groups=[])
    if not await redis.exists(key):
        return empty
    try:
        length = int(await redis.xlen(key))
        groups = await redis.xinfo_groups(key)
        described = [await _group(redis, key, g) for g in sorted(groups, key=lambda g: str(g["name"]))]
    except redis_errors.ResponseError as exc:
        if "no such key" in str(exc).lower():  # deleted while we looked
            return empty
        raise
    return StreamHealth(key=key, exists=True, length=length, groups=described)


async def all_streams(redis: Redis, names: StreamNames) -> dict[str, StreamHealth]:
    """Describe every contract stream, keyed by its contract name."""
    return {stream: await stream_health(redis, names.key(stream)) for stream in GROUPS}
