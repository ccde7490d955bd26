"""Publishing a signal exactly once per signal_id, with its throttle pass, atomically, from any producer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared.events import SignalEmitted
from shared.streams import EVENT_FIELD, TYPE_FIELD

SEEN_TTL_SECONDS = 30 * 24 * 3600

# Mark the id as published, append the entry and record the throttle pass in one step, so
# two producers racing with one signal_id publish it once, two racing on one throttle key
# pass once, and a crash cannot leave a mark or a pass without an entry. The throttle key
# (KEYS[3]) must still hold what the caller decided on (ARGV[7] '1' and its value ARGV[8],
# or ARGV[7] '0': no value), else {-1}: decide again. The append comes before any write:
# should Redis refuse it (a script stops at its first error and keeps what it wrote before),
# nothing is written at all, so the signal is sent when tried again.
_PUBLISH_ONCE = """
local seen = redis.call('GET', KEYS[2])
if seen then return {0, seen} end
local current = redis.call('GET', KEYS[3])
if ARGV[7] == '1' then
  if current ~= ARGV[8] then return {-1} end
elseif current then
  return {-1}
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*', ARGV[1], ARGV[2], ARGV[3], ARGV[4])
redis.call('SET', KEYS[2], id, 'EX', ARGV[5])
redis.call('SET', KEYS[3], ARGV[9])
return {1, id}
"""


@dataclass(frozen=True)
class ThrottleSwap:
    """A throttle key to move from `expected` (None: the key is absent) to `new` as the signal is sent."""

    key: str
    expected: str | bytes | None
    new: str


def seen_key(prefix: str, signal_id: str) -> str:
    """The Redis key marking a signal_id as published."""
    return f"{prefix}intentflow:published:{signal_id}"


async def publish_signal(
    redis: Redis,
    stream_key: str,
    event: SignalEmitted,
    swap: ThrottleSwap,
    *,
    prefix: str = "",
    maxlen: int = 1_000_000,
) -> tuple[bool, str] | None:
    """Publish unless this signal_id was published before, recording a throttle pass in the same
    atomic step: the signal is sent and swap.key set to swap.new only while swap.key still holds
    swap.expected. Returns (new, entry id).

    Returns None, having written nothing, when the key moved meanwhile. A signal_id published
    before is answered (False, its entry id) whatever the key holds, leaving it.
    """
    keys = [stream_key, seen_key(prefix, str(event.signal_id)), swap.key]
    args: list[str | bytes] = [
        TYPE_FIELD,
        type(event).__name__,
        EVENT_FIELD,
        event.model_dump_json(),
        str(SEEN_TTL_SECONDS),
        str(maxlen),
        *(["0", ""] if swap.expected is None else ["1", swap.expected]),
        swap.new,
    ]
    result: Any = await redis.eval(_PUBLISH_ONCE, len(keys), *keys, *args)
    if int(result[0]) < 0:
        return None
    return bool(int(result[0])), _text(result[1])


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
