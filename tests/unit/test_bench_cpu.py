"""The bench's CPU accounting: a process that exits during a window takes nothing out of its sum."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.bench.load import cpu_by_pid, cpu_since

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def _burner(seconds: float, then_sleep: float = 0.0) -> subprocess.Popen[bytes]:
    code = BURN.format(s=seconds) + (f"time.sleep({then_sleep})\n" if then_sleep else "")
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_process_that_exits_in_the_window_counts_nothing_and_takes_nothing_away() -> None:
    gone = _burner(0.3)
    stays = _burner(0.3, then_sleep=30)
    try:
        time.sleep(1.0)  # both have burnt their 0.3 s
        before = cpu_by_pid([gone.pid, stays.pid])
        assert before[gone.pid] > 0.2 and before[stays.pid] > 0.2
        gone.wait(10)
        # What a sum over the processes still there would give: 0.3 s less than before.
        assert sum(cpu_by_pid([gone.pid, stays.pid]).values()) < sum(before.values()) - 0.2
        assert 0 <= cpu_since(before) < 0.1
    finally:
        stays.kill()
        stays.wait(10)
        gone.kill()


def test_the_cpu_a_running_process_uses_in_the_window_is_counted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nsys.stdin.readline()\n" + BURN.format(s=0.3)],
        stdin=subprocess.PIPE,
    )
    try:
        time.sleep(0.3)
        before = cpu_by_pid([proc.pid])
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        time.sleep(1.0)
        assert 0.25 < cpu_since(before) < 1.0
    finally:
        proc.kill()
        proc.wait(10)
