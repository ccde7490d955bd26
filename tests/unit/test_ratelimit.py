"""The webhook's per-client token bucket, on a hand-driven clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.signal_monitor.ratelimit import TokenBuckets


def test_allows_a_burst_of_the_rate_then_refuses_with_the_wait() -> None:
    buckets = TokenBuckets(6)  # 6 per minute: one token every 10 s
    assert all(buckets.take("a", 100.0).allowed for _ in range(6))
    refused = buckets.take("a", 100.0)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(10.0)
    assert not buckets.take("a", 109.0).allowed
    assert buckets.take("a", 110.0).allowed
    assert not buckets.take("a", 110.0).allowed


def test_clients_have_their_own_buckets() -> None:
    buckets = TokenBuckets(1)
    assert buckets.take("a", 0.0).allowed
    assert not buckets.take("a", 0.0).allowed
    assert buckets.take("b", 0.0).allowed


def test_a_quiet_minute_refills_the_bucket_but_never_past_the_rate() -> None:
    buckets = TokenBuckets(3)
    for _ in range(3):
        buckets.take("a", 0.0)
    allowed = [buckets.take("a", 3600.0).allowed for _ in range(5)]
    assert allowed == [True, True, True, False, False]


def test_a_clock_going_backwards_grants_nothing() -> None:
    buckets = TokenBuckets(1)
    assert buckets.take("a", 100.0).allowed
    assert not buckets.take("a", 50.0).allowed
    assert not buckets.take("a", 100.0).allowed


def test_memory_stays_bounded_and_full_buckets_are_forgotten_first() -> None:
    buckets = TokenBuckets(2, max_clients=3)
    buckets.take("busy", 0.0)
    buckets.take("busy", 0.0)
    buckets.take("x", 0.0)
    buckets.take("y", 0.0)
    # At t=60 x and y have refilled; busy took its whole burst at t=0 and also refilled.
    buckets.take("z", 30.0)
    assert len(buckets) <= 3
    for i in range(20):
        buckets.take(f"c{i}", 31.0 + i)
        assert len(buckets) <= 3


def test_rejects_a_rate_of_zero() -> None:
    with pytest.raises(ValueError, match="rate_per_min"):
        TokenBuckets(0)


@given(
    rate=st.integers(min_value=1, max_value=120),
    gaps=st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), min_size=1, max_size=300),
)
def test_never_more_than_burst_plus_refill_in_any_run(rate: int, gaps: list[float]) -> None:
    buckets = TokenBuckets(rate)
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        allowed += buckets.take("a", now).allowed
    assert allowed <= rate + now * rate / 60 + 1e-9
