"""The bench's disk probe as a process: it reads a device's counters and reports slow completions."""

from __future__ import annotations

import os
import time
from pathlib import Path

import asyncpg

from tests.bench.disk_probe import DiskProbe, database_stat_path, parse_counters, served_here, stat_path_for


def _write(path: Path, fields: list[int]) -> None:
    """Rewrite the counters in place, as the kernel does (the probe keeps the file open), in
    one write of the same length, so the probe never reads half a file."""
    text = " ".join(f"{field:>8}" for field in fields) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, text.encode(), 0)
    finally:
        os.close(fd)


def test_the_probe_reports_an_interval_whose_requests_waited_long_and_not_a_quick_one(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    fields = [0] * 17
    _write(stat, fields)
    with DiskProbe(stat) as probe:
        fields[4], fields[7] = 50, 25  # 50 writes that waited 25 ms: quick
        _write(stat, fields)
        time.sleep(0.05)
        fields[4], fields[7], fields[15], fields[16] = 90, 45, 1, 40  # 40 quick writes, a 40 ms flush
        _write(stat, fields)
        time.sleep(0.05)
    assert probe.result["device"] == tmp_path.name
    assert probe.result["samples"] >= 10
    assert probe.result["slow"] == 1
    assert probe.result["worst_ms"] == 40.0
    assert probe.result["slow_at"][0][1:] == ["flush", 1, 40]
    assert probe.slow_at and time.time() - 1 < probe.slow_at[0] <= time.time()


def test_without_a_disk_to_probe_the_window_says_so() -> None:
    with DiskProbe(None) as probe:
        pass
    assert probe.result == {"device": None}
    assert probe.slow_at == []


def test_a_directory_on_this_machine_has_its_disks_counters(tmp_path: Path) -> None:
    stat = stat_path_for(str(tmp_path))
    if stat is None:  # a filesystem with no block device of its own (tmpfs, overlay)
        assert os.major(os.stat(tmp_path).st_dev) == 0
        return
    assert len(parse_counters(stat.read_bytes())) >= 11
    assert stat_path_for(str(tmp_path / "missing")) is None


async def test_the_database_disk_is_the_one_holding_its_data_directory(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        directory = str(await conn.fetchval("SHOW data_directory"))
        address = await conn.fetchval("SELECT host(inet_server_addr())")
    finally:
        await conn.close()
    # A server in a container keeps its data out of this machine's view: nothing to probe then.
    found = await database_stat_path(database_url)
    assert found == (stat_path_for(directory) if served_here(address) else None)
    if found is not None:
        assert len(parse_counters(found.read_bytes())) >= 11
