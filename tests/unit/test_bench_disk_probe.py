"""The bench's disk probe, its arithmetic: completions between readings, slow ones, slow signals."""

from __future__ import annotations

from tests.bench.disk_probe import (
    clear_of_slow_disk,
    completions,
    served_here,
    signals_across,
    slowest,
    summary,
)

#            reads (ios, merges, sectors, ms) | writes (same)   | in flight, io ms, queue ms | discards (same)  | flushes, ms
BEFORE = [10, 0, 80, 5, 100, 3, 800, 40, 1, 900, 950, 2, 0, 16, 1, 50, 7]
AFTER = [11, 0, 88, 6, 103, 3, 824, 70, 0, 930, 990, 3, 0, 24, 9, 51, 20]


def test_completions_are_counted_by_kind_with_what_they_waited() -> None:
    assert completions(BEFORE, AFTER) == {
        "read": (1, 1),
        "write": (3, 30),
        "discard": (1, 8),
        "flush": (1, 13),
    }
    # Nothing completed: nothing to say about it.
    assert completions(BEFORE, BEFORE) == {}


def test_a_kernel_without_discard_and_flush_counters_counts_reads_and_writes() -> None:
    assert completions(BEFORE[:11], AFTER[:11]) == {"read": (1, 1), "write": (3, 30)}


def test_one_slow_flush_is_not_averaged_away_by_quick_writes_beside_it() -> None:
    assert slowest({"write": (40, 20), "flush": (1, 45)}) == ("flush", 1, 45)
    assert slowest({"write": (3, 30), "flush": (1, 13)}) == ("flush", 1, 13)
    assert slowest({}) is None


def test_the_summary_counts_every_slow_completion_and_names_the_worst_average() -> None:
    slow = [(1.0, "flush", 3, 45), (2.0, "write", 1, 120), (3.0, "write", 10, 110)]
    result = summary(400, "vda", slow, 10.0)
    assert result["samples"] == 400
    assert result["device"] == "vda"
    assert result["slow"] == 3
    assert result["worst_ms"] == 120.0
    assert result["slow_at"] == [[1.0, "flush", 3, 45], [2.0, "write", 1, 120], [3.0, "write", 10, 110]]


def test_a_slow_signal_counts_as_across_a_slow_completion_that_came_while_it_waited() -> None:
    spans = [
        (10.000, 10.050),  # 50 ms, the completion at 10.040 within it
        (10.030, 10.037),  # 7 ms: not slow, not counted
        (10.036, 10.050),  # 14 ms, 10.040 within it
        (10.100, 10.130),  # 30 ms, the completion at 10.133 within one probe interval after
        (11.000, 11.020),  # 20 ms, no completion near it
    ]
    assert signals_across(spans, [10.040, 10.133]) == {"over_ms": 10.0, "signals": 4, "across_slow_disk": 3}
    assert signals_across(spans, []) == {"over_ms": 10.0, "signals": 4, "across_slow_disk": 0}
    assert signals_across(spans, [10.040], over_ms=40) == {"over_ms": 40, "signals": 1, "across_slow_disk": 1}


def test_the_latency_clear_of_the_disk_leaves_out_every_signal_a_slow_completion_came_across() -> None:
    spans = [
        (10.000, 10.050),  # 50 ms, the completion at 10.040 within it: left out
        (10.030, 10.037),  # 7 ms, 10.040 within one probe interval after: left out, fast as it was
        (10.041, 10.045),  # 4 ms, sent after it, none after: kept
        (11.000, 11.020),  # 20 ms, no completion near it: kept
        (11.100, 11.103),  # 3 ms: kept
    ]
    clear = clear_of_slow_disk(spans, [10.040])
    assert (clear["signals"], clear["left_out"]) == (3, 2)
    assert (clear["p50"], clear["max"]) == (4.0, 20.0)
    everything = clear_of_slow_disk(spans, [])
    assert (everything["signals"], everything["left_out"], everything["max"]) == (5, 0, 50.0)
    assert clear_of_slow_disk([(1.0, 1.2)], [1.1])["signals"] == 0  # none clear: counts only
    assert clear_of_slow_disk([(1.0, 1.2)], [1.1])["left_out"] == 1
    assert "p99" not in clear_of_slow_disk([(1.0, 1.2)], [1.1])


def test_only_a_server_on_a_unix_socket_or_a_loopback_address_is_on_this_machine() -> None:
    assert served_here(None)  # a Unix socket
    assert served_here("127.0.0.1") and served_here("127.0.0.2") and served_here("::1")
    assert not served_here("10.0.0.5")
    assert not served_here("172.18.0.2")  # a container's address, its disk not ours
