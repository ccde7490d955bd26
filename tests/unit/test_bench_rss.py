"""The bench's resident-memory sampler: a figure even for a short watch, and what 'flat' means."""

from __future__ import annotations

import os

from tests.bench.run import RssSampler


def test_a_watch_shorter_than_one_period_still_has_its_first_and_last_sample() -> None:
    sampler = RssSampler()
    sampler.watch("me", os.getpid())
    sampler.stop()  # never started: no periodic sample, yet one at watch and one at stop
    peaks, flat, detail = sampler.summary()
    assert detail["me"]["samples"] == 2
    assert peaks["me"] >= detail["me"]["start"] > 0
    assert flat["me"] is True


def test_flat_is_the_second_half_peak_within_ten_percent_and_five_mb_of_the_first() -> None:
    sampler = RssSampler()
    sampler.samples = {
        "steady": [(0, 100.0), (1, 100.0), (2, 114.9), (3, 110.0)],  # 114.9 <= 100 * 1.1 + 5
        "growing": [(0, 100.0), (1, 100.0), (2, 115.1), (3, 120.0)],
        "gone": [],
    }
    peaks, flat, detail = sampler.summary()
    assert flat == {"steady": True, "growing": False}
    assert peaks == {"steady": 114.9, "growing": 120.0}
    assert detail["growing"] == {
        "start": 100.0,
        "first_half_peak": 100.0,
        "second_half_peak": 120.0,
        "end": 120.0,
        "samples": 4,
    }
