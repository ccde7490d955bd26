"""make bench-steps' summary: the batches of a window by step, the slow ones by their longest step."""

from __future__ import annotations

import pytest

from tests.bench.steps import summarize


def _batch(at: float, ms: float, cpu_ms: float, entries: int = 3, **steps: float) -> dict[str, float]:
    return {"at": at, "ms": ms, "cpu_ms": cpu_ms, "entries": float(entries), **steps}


def test_only_batches_that_ended_in_the_window_count() -> None:
    records = [
        _batch(9.9, 50.0, 1.0, read=40.0),  # before the window (the warm-up)
        _batch(10.0, 2.0, 1.0, 2, read=0.5, commit=1.0, settle=0.25),
        _batch(15.0, 3.0, 1.5, 4, read=0.5, commit=1.5, settle=0.5),
        _batch(20.1, 90.0, 1.0, commit=80.0),  # after it (the stop)
    ]

    summary = summarize(records, since=10.0, until=20.0, slow_ms=6.0)

    assert summary["batches"] == 2
    assert summary["signals_per_batch"] == 3.0
    assert summary["batch_ms"]["max"] == 3.0
    assert summary["step_ms"]["read"]["max"] == 0.5
    assert summary["step_ms"]["commit"]["max"] == 1.5
    # What the round trips leave of a batch is the orchestrator's own work.
    assert summary["step_ms"]["python"]["p50"] == 0.25
    assert summary["step_ms"]["python"]["max"] == 0.5
    assert summary["cpu_ms"]["mean"] == 1.25
    assert summary["slow"]["batches"] == 0


def test_a_slow_batch_is_counted_under_its_longest_step_and_own_cpu_when_it_ran_most_of_it() -> None:
    records = [
        _batch(1.0, 10.0, 1.0, read=8.0, commit=1.0, settle=0.5),
        _batch(2.0, 12.0, 2.0, read=0.5, commit=9.0, settle=0.5),
        _batch(3.0, 9.0, 1.0, read=0.5, commit=1.0, settle=7.0),
        _batch(4.0, 11.0, 9.0, read=0.5, commit=1.0, settle=0.5),  # 9 ms of its own: the process
        _batch(5.0, 7.0, 6.0, read=0.5, commit=1.0, settle=0.5),
        _batch(6.0, 2.0, 1.0, read=0.5, commit=1.0, settle=0.25),  # not slow
    ]

    slow = summarize(records, since=0.0, until=10.0, slow_ms=6.0)["slow"]

    assert slow["batches"] == 5
    assert slow["share"] == round(5 / 6, 4)
    assert slow["longest_step"] == {"read": 1, "commit": 1, "settle": 1, "python": 2}
    assert slow["own_cpu"] == 2


def test_a_step_a_batch_did_not_take_counts_as_none_of_its_time() -> None:
    # A batch of entries that were all invalid, or all decided before, settles without a commit.
    summary = summarize([_batch(1.0, 1.0, 0.5, settle=0.5)], since=0.0, until=2.0, slow_ms=6.0)

    assert summary["step_ms"]["commit"]["max"] == 0.0
    assert summary["step_ms"]["python"]["max"] == 0.5


def test_an_empty_window_is_an_error_not_a_summary_of_nothing() -> None:
    with pytest.raises(ValueError, match="no batch ended in the window"):
        summarize([_batch(1.0, 1.0, 0.5)], since=2.0, until=3.0, slow_ms=6.0)
