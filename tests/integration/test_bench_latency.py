"""The benchmark's latency: to the decision committed, bounded by its OrderDecided entry's time."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from tests.bench.bench_orchestrator import added_by, decision_spans

# The settlement's shape: a script that adds the event, as the orchestrator's does after COMMIT.
_ADD = "return redis.call('XADD', KEYS[1], '*', 'event', ARGV[1])"


def test_an_entry_is_added_before_the_millisecond_after_its_id() -> None:
    assert added_by("1700000000123-0") == pytest.approx(1700000000.124)
    assert added_by("1700000000123-57") == pytest.approx(1700000000.124)


def test_each_decided_signal_has_both_latencies_and_the_undecided_none() -> None:
    published = {"a": 1700000000.1200, "b": 1700000000.1300, "c": 1700000000.1400}
    decided = {"a": (1700000000.1300, "1700000000123-0"), "b": (1700000000.1390, "1700000000135-1")}

    spans = decision_spans(published, decided)

    assert [sent for sent, _, _ in spans] == [published["a"], published["b"]]
    assert [(committed - sent) * 1000 for sent, committed, _ in spans] == pytest.approx([4.0, 6.0], abs=1e-3)
    assert [(read - sent) * 1000 for sent, _, read in spans] == pytest.approx([10.0, 9.0], abs=1e-3)


async def test_a_script_added_entry_is_bounded_by_the_calls_clock(redis: Redis, prefix: str) -> None:
    """The bound holds on a real server: Redis's clock and the bench's are the same clock."""
    add = redis.register_script(_ADD)
    for n in range(200):
        before = time.time()
        entry_id = str(await add(keys=[f"{prefix}decisions"], args=[str(n)]))
        after = time.time()
        # Added after the call began and before it returned (to the id's millisecond).
        assert before <= added_by(entry_id) + 1e-6
        assert added_by(entry_id) - 0.001 <= after + 1e-6
