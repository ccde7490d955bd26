"""Publishing a signal exactly once per signal_id, atomically, from any producer."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from shared.events import SignalEmitted
from shared.streams import EVENT_FIELD, TYPE_FIELD

SEEN_TTL_SECONDS = 30 * 24 * 3600

# Mark the id as published and append the entry in one step, so two producers racing
# with one signal_id publish it once, and a crash cannot leave a mark without an entry.
_PUBLISH_ONCE = """
if redis.call('SET', KEYS[2], 'pending', 'NX', 'EX', ARGV[5]) then
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*', ARGV[1], ARGV[2], ARGV[3], ARGV[4])
  redis.call('SET', KEYS[2], id, 'XX', 'EX', ARGV[5])
  return {1, id}
end
return {0, redis.call('GET', KEYS[2])}
"""


def seen_key(prefix: str, signal_id: str) -> str:
    """The Redis key marking a signal_id as published."""
    return f"{prefix}intentflow:published:{signal_id}"


async def publish_signal(
    redis: Redis,
    stream_key: str,
    event: SignalEmitted,
    *,
    prefix: str = "",
    maxlen: int = 1_000_000,
) -> tuple[bool, str]:
    """Publish unless this signal_id was published before; return (new, entry id)."""
    result: Any = await redis.eval(
        _PUBLISH_ONCE,
        2,
        stream_key,
        seen_key(prefix, str(event.signal_id)),
        TYPE_FIELD,
        type(event).__name__,
        EVENT_FIELD,
        event.model_dump_json(),
        str(SEEN_TTL_SECONDS),
        str(maxlen),
    )
    return bool(int(result[0])), str(result[1])
