"""How the machine served runnable work during a measurement window: a CPU-bound probe.

A probe that sleeps and measures its own oversleep misses a VM's vCPUs being taken away; one
that works sees it: every `every_s` it times a fixed piece of pure-Python work, calibrated at
its start, and counts the pieces that took `slow_x` times as long or more. Under load that
also counts waits for a CPU the processes under test hold (a signal in hand waits the same
way); on the idle machine it shows the VM alone. Its own cost: ~0.2 ms of work every 20 ms,
1 % of a core.

Run as `python -m tests.bench.stall_probe`: it probes until its stdin closes, then prints one
JSON summary after a "ready" line (`Probe` starts and stops it around a window).
"""

from __future__ import annotations

import json
import select
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from tests.bench.probe_process import ProbeProcess, module_command

WORK_LOOPS = 4000
SLOW_X = 5.0


def work() -> int:
    """The fixed piece of work (~0.2 ms of one core here)."""
    total = 0
    for i in range(WORK_LOOPS):
        total += i * i
    return total


def timed() -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def summary(calibrated_s: float, samples_s: Sequence[float], slow_x: float = SLOW_X) -> dict[str, Any]:
    """What the samples say: how many pieces ran slow_x times slower or worse, the worst, and the
    time lost in them (beyond the calibrated time)."""
    slow = [s for s in samples_s if s >= slow_x * calibrated_s]
    return {
        "samples": len(samples_s),
        "calibrated_ms": round(calibrated_s * 1000, 3),
        "stalled": len(slow),
        "worst_x": round(max(samples_s) / calibrated_s, 1) if samples_s else 0.0,
        "stalled_ms": round(sum(s - calibrated_s for s in slow) * 1000, 1),
    }


def probe(every_s: float = 0.02) -> dict[str, Any]:
    """Probe until stdin closes (or says anything); return the summary."""
    calibrated = statistics.median(timed() for _ in range(51))
    print("ready", flush=True)
    samples: list[float] = []
    while True:
        samples.append(timed())
        readable, _, _ = select.select([sys.stdin], [], [], every_s)
        if readable:
            return summary(calibrated, samples)


class Probe(ProbeProcess):
    """A probe process around a window: `with Probe() as p: …`, then `p.result`."""

    def __init__(self) -> None:
        super().__init__(module_command("tests.bench.stall_probe"))


if __name__ == "__main__":
    print(json.dumps(probe()))
