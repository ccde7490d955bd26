"""The bench's CPU accounting: a process that exits during a window takes nothing out of its sum."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.bench.load import PRESSURE, CpuWindow, cpu_by_pid, cpu_since, pressure_totals, redis_server_pids

# Waits for a line, burns 0.3 s of CPU, says so, then waits for another line before it exits.
BURNER = (
    "import sys, time\n"
    "sys.stdin.readline()\n"
    "t = time.process_time()\n"
    "while time.process_time() - t < 0.3: pass\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.readline()\n"
)


def _burner() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def _burn(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "burnt"


def _end(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)


def test_a_process_that_exits_in_the_window_counts_nothing_and_takes_nothing_away() -> None:
    gone, stays = _burner(), _burner()
    try:
        _burn(gone)
        _burn(stays)
        before = cpu_by_pid([gone.pid, stays.pid])
        assert before[gone.pid] >= 0.25 and before[stays.pid] >= 0.25  # /proc counts in ticks
        _end(gone)
        # A sum over the processes still there drops by what the gone one had used.
        assert sum(cpu_by_pid([gone.pid, stays.pid]).values()) < sum(before.values()) - 0.25
        assert 0 <= cpu_since(before) < 0.1
    finally:
        for proc in (gone, stays):
            proc.kill()
            proc.wait(10)


def test_the_cpu_a_running_process_uses_in_the_window_is_counted() -> None:
    proc = _burner()
    try:
        before = cpu_by_pid([proc.pid])
        _burn(proc)  # still running after it
        assert 0.25 <= cpu_since(before) < 1.0
    finally:
        proc.kill()
        proc.wait(10)


def test_a_window_counts_each_party_and_the_whole_machine() -> None:
    busy, idle = _burner(), _burner()
    try:
        with CpuWindow(busy=[busy.pid], idle=[idle.pid], gone=[2**22 + 1]) as window:
            _burn(busy)
        assert 0.25 <= window.seconds["busy"] < 1.0
        assert window.seconds["idle"] < 0.1
        assert window.seconds["gone"] == 0  # no such process: nothing counted, no error
        # The machine was busy at least as long as the burner was (both counted in ticks).
        assert window.seconds["machine_busy"] >= window.seconds["busy"] - 0.05
        assert set(window.cores) == {"busy", "idle", "gone", "machine_busy"}
        assert window.cores["busy"] > 0
        # Per unit of work: each party's own CPU, the machine's left out.
        assert window.per(2) == {name: window.seconds[name] / 2 * 1e6 for name in ("busy", "idle", "gone")}
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait(10)


def test_pressure_totals_are_the_some_lines_of_each_resource_there_is(tmp_path: Path) -> None:
    (tmp_path / "cpu").write_text(
        "some avg10=0.70 avg60=4.75 avg300=6.39 total=97005254\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    (tmp_path / "io").write_text(
        "some avg10=1.79 avg60=1.53 avg300=1.53 total=71384312\nfull avg10=1.62 avg60=1.19 avg300=1.13 total=65638172\n"
    )
    # No memory file: a kernel that keeps no such figure leaves it out.
    assert pressure_totals(tmp_path) == {"cpu": 97005254, "io": 71384312}
    assert pressure_totals(tmp_path / "missing") == {}


def test_a_window_counts_the_time_tasks_waited_for_a_cpu() -> None:
    if not (PRESSURE / "cpu").exists():
        pytest.skip("this kernel keeps no pressure stall information")
    burners = [_burner() for _ in range(3)]  # three of them on (at most) two cores here
    try:
        with CpuWindow() as window:
            for proc in burners:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for proc in burners:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "burnt"
        assert set(window.pressure_ms) >= {"cpu"}
        if len(os.sched_getaffinity(0)) <= 2:
            assert window.pressure_ms["cpu"] > 0
        assert all(value >= 0 for value in window.pressure_ms.values())
    finally:
        for proc in burners:
            proc.kill()
            proc.wait(10)


def test_the_local_redis_server_is_found(redis_url: str) -> None:
    import psutil

    pids = redis_server_pids()
    assert all(psutil.Process(pid).name().startswith("redis-server") for pid in pids)
    port = urlparse(redis_url).port or 6379
    listening = {
        conn.pid
        for conn in psutil.net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid
    }
    # The test's Redis, when it runs on this machine as a redis-server process, is among them.
    serving = {pid for pid in listening if psutil.Process(pid).name().startswith("redis-server")}
    assert serving <= set(pids)
