"""A per-client token bucket for the webhook: pure, clocked by the caller.

Each client (the caller's IP) has a bucket of `rate_per_min` tokens that refills at
`rate_per_min / 60` tokens per second; a request takes one token, and a request that
finds the bucket empty is refused with the seconds until a token is back. A full burst
of `rate_per_min` calls is allowed after a quiet minute, never more.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class RateDecision:
    """Whether one call may proceed, and when to retry if not."""

    allowed: bool
    retry_after: float = 0.0


class TokenBuckets:
    """Token buckets keyed by client; forgets clients whose bucket has refilled."""

    def __init__(self, rate_per_min: float, *, max_clients: int = 10_000) -> None:
        if rate_per_min <= 0:
            raise ValueError(f"rate_per_min must be > 0, not {rate_per_min}")
        self.capacity = float(rate_per_min)
        self.per_second = rate_per_min / 60.0
        self.max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}

    def take(self, client: str, now: float) -> RateDecision:
        """Take one token from `client`'s bucket at monotonic time `now`."""
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._forget_full(now)
            bucket = self._buckets[client] = _Bucket(self.capacity, now)
        else:
            elapsed = max(now - bucket.updated, 0.0)
            bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.per_second)
            bucket.updated = max(now, bucket.updated)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return RateDecision(True)
        return RateDecision(False, retry_after=(1.0 - bucket.tokens) / self.per_second)

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled behaves exactly like a new one: dropping it changes nothing.
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + max(now - b.updated, 0.0) * self.per_second >= self.capacity
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_clients:
            # Every tracked client is mid-burst: drop the oldest so memory stays bounded.
            oldest = min(self._buckets, key=lambda k: self._buckets[k].updated)
            del self._buckets[oldest]
