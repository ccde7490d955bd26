"""The bench's stall probe: what its samples say, and a probe process started and stopped."""

from __future__ import annotations

import time

from tests.bench.stall_probe import Probe, summary


def test_a_summary_counts_the_pieces_five_times_slower_and_the_time_they_lost() -> None:
    calibrated = 0.001
    samples = [0.001, 0.0011, 0.0049, 0.005, 0.020, 0.001]
    got = summary(calibrated, samples)
    assert got["samples"] == 6
    assert got["stalled"] == 2  # 5 ms and 20 ms; 4.9 ms is under five times
    assert got["worst_x"] == 20.0
    assert got["stalled_ms"] == 23.0  # (5 - 1) + (20 - 1)


def test_a_summary_of_no_samples_says_so() -> None:
    assert summary(0.001, []) == {
        "samples": 0,
        "calibrated_ms": 1.0,
        "stalled": 0,
        "worst_x": 0.0,
        "stalled_ms": 0.0,
    }


def test_a_probe_process_samples_while_its_window_lasts_and_reports_once_stopped() -> None:
    with Probe() as probe:
        assert probe.result == {}
        time.sleep(0.3)
    assert probe.result["samples"] >= 3  # one every 20 ms, however slow the machine
    assert probe.result["calibrated_ms"] > 0
    assert probe.result["stalled"] <= probe.result["samples"]
