"""How the disk under PostgreSQL served during a measurement window: its slow completions.

A commit returns when its WAL is flushed to the disk, so a disk that holds its requests for
tens of milliseconds holds every commit for as long, and the signals published meanwhile
queue behind it. The kernel counts, per block device (`/sys/dev/block/MAJ:MIN/stat`), the
requests completed and the milliseconds they waited, by kind (reads, writes, discards,
flushes). Every `every_s` (5 ms) the probe reads those counters; an interval in which the
requests of one kind that completed had waited `slow_ms` (10) or more on average is a slow
completion: requests held by a stall that ended in it (by kind, so that one slow flush is not
averaged away by the quick writes beside it). It only reads the counters, from a descriptor
opened once: it adds no I/O of its own, and ~4 % of a core on the slower 2 vCPU VM (~0.4 s of
CPU in 10 s; opening the file by its path at every reading cost twice that).

Run as `python -m tests.bench.disk_probe STAT_PATH`: it probes until its stdin closes, then
prints one JSON summary after a "ready" line (`DiskProbe` starts and stops it around a window).
`signals_across` then tells how many of a window's slow signals waited across one, and
`clear_of_slow_disk` the latency of the signals none came across.
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import os
import select
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

from tests.bench.probe_process import ProbeProcess, module_command

EVERY_S = 0.005
SLOW_MS = 10.0
KEPT = 1000
"""At most this many slow completions are listed in the summary (all are counted)."""

# Fields of the stat file (Documentation/block/stat.rst): requests completed and the ms they
# waited, for reads, writes, discards and flushes (the last two where the kernel counts them).
_KINDS = {"read": (0, 3), "write": (4, 7), "discard": (11, 14), "flush": (15, 16)}


def stat_path_for(directory: str) -> Path | None:
    """The stat file of the block device holding `directory`, or None if it has none here."""
    try:
        device = os.stat(directory).st_dev
    except OSError:
        return None
    path = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/stat")
    return path if path.exists() else None


def served_here(server_address: str | None) -> bool:
    """Whether a server that answers `inet_server_addr()` so runs on this machine: over a Unix
    socket (no address) or on a loopback address."""
    return server_address is None or ipaddress.ip_address(server_address.split("/")[0]).is_loopback


async def database_stat_path(database_url: str) -> Path | None:
    """The stat file of the disk holding the database server's data directory, when the server
    runs on this machine (a directory of the same name here would be another one's)."""
    import asyncpg  # here rather than at the top: the probe's own process does without it

    conn = await asyncpg.connect(database_url)
    try:
        if not served_here(await conn.fetchval("SELECT host(inet_server_addr())")):
            return None
        directory = await conn.fetchval("SHOW data_directory")
    except asyncpg.PostgresError:  # not a superuser nor pg_read_all_settings: not shown
        return None
    finally:
        await conn.close()
    return stat_path_for(str(directory))


def parse_counters(text: bytes) -> list[int]:
    return [int(field) for field in text.split()]


def completions(before: Sequence[int], after: Sequence[int]) -> dict[str, tuple[int, int]]:
    """{kind: (requests completed, ms they waited)} between two readings of a stat file, for
    each kind of request the kernel counts and of which some completed."""
    out: dict[str, tuple[int, int]] = {}
    for kind, (count, waited) in _KINDS.items():
        if waited < min(len(before), len(after)) and (n := after[count] - before[count]) > 0:
            out[kind] = (n, after[waited] - before[waited])
    return out


def slowest(completed: dict[str, tuple[int, int]]) -> tuple[str, int, int] | None:
    """The kind whose completed requests waited longest on average: (kind, requests, ms)."""
    if not completed:
        return None
    kind = max(completed, key=lambda k: completed[k][1] / completed[k][0])
    return (kind, *completed[kind])


def summary(
    samples: int, device: str, slow: Sequence[tuple[float, str, int, int]], slow_ms: float = SLOW_MS
) -> dict[str, Any]:
    """What the probe saw: `slow` holds (wall time, kind, requests, ms waited) of each slow interval."""
    return {
        "device": device,
        "samples": samples,
        "slow_ms": slow_ms,
        "slow": len(slow),
        "worst_ms": round(max((waited / n for _, _, n, waited in slow), default=0.0), 1),
        "slow_at": [[round(at, 3), kind, n, waited] for at, kind, n, waited in slow[:KEPT]],
    }


def probe(path: Path, every_s: float = EVERY_S, slow_ms: float = SLOW_MS) -> dict[str, Any]:
    """Probe until stdin closes (or says anything); return the summary.

    The file stays open: a sysfs attribute read again from offset 0 is generated afresh.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        before = parse_counters(os.pread(fd, 4096, 0))
        print("ready", flush=True)
        slow: list[tuple[float, str, int, int]] = []
        samples = 0
        device = path.resolve().parent.name  # /sys/dev/block/MAJ:MIN links to the device's own name
        while True:
            readable, _, _ = select.select([sys.stdin], [], [], every_s)
            after = parse_counters(os.pread(fd, 4096, 0))
            samples += 1
            worst = slowest(completions(before, after))
            if worst is not None and worst[2] / worst[1] >= slow_ms:
                slow.append((time.time(), *worst))
            before = after
            if readable:
                return summary(samples, device, slow, slow_ms)
    finally:
        os.close(fd)


def _across(spans: Sequence[tuple[float, float]], slow_at: Sequence[float]) -> list[bool]:
    """For each (sent, done) span, whether a slow completion came while it waited: the first at
    or after its sending came by its end (one probe interval later)."""
    ordered = sorted(slow_at)
    firsts = (bisect.bisect_left(ordered, sent) for sent, _ in spans)
    return [
        i < len(ordered) and ordered[i] <= done + EVERY_S for (_, done), i in zip(spans, firsts, strict=True)
    ]


def signals_across(
    spans: Iterable[tuple[float, float]], slow_at: Sequence[float], *, over_ms: float = 10.0
) -> dict[str, Any]:
    """Of the signals whose (sent, done) span is over `over_ms`, how many waited across a slow
    completion: one that came between their sending and their end (one probe interval later)."""
    slow = [(sent, done) for sent, done in spans if (done - sent) * 1000 > over_ms]
    return {"over_ms": over_ms, "signals": len(slow), "across_slow_disk": sum(_across(slow, slow_at))}


def clear_of_slow_disk(spans: Iterable[tuple[float, float]], slow_at: Sequence[float]) -> dict[str, Any]:
    """The latency percentiles of the signals no slow completion came across, and how many did.

    What the pipeline answers with the disk out of the way: the signals left out waited on a
    disk that held its writes (every commit waits for its WAL flush), whatever the code. Nearly:
    a signal sent just after a stall, which waits behind the backlog it left, stays in.
    A reading beside the window's own percentiles, never instead of them.
    """
    # Imported here: the probe process runs this module, and load's imports (redis, pydantic)
    # would cost it ~0.3 s of CPU at every start for nothing it uses.
    from tests.bench.load import percentiles

    spans = list(spans)
    across = _across(spans, slow_at)
    clear = [(done - sent) * 1000 for (sent, done), out in zip(spans, across, strict=True) if not out]
    counts = {"signals": len(clear), "left_out": len(spans) - len(clear)}
    # None clear (a window the disk held throughout): counts only, no NaN in the JSON.
    return {**percentiles(clear), **counts} if clear else counts


class DiskProbe(ProbeProcess):
    """A probe process around a window: `with DiskProbe(path) as d: …`, then `d.result`.

    With no path (the database's disk is not on this machine, or not readable) it probes
    nothing and `result` says so.
    """

    def __init__(self, path: Path | None) -> None:
        command = [] if path is None else module_command("tests.bench.disk_probe", str(path))
        super().__init__(command, empty={"device": None})
        self.path = path

    @property
    def slow_at(self) -> list[float]:
        return [float(at) for at, *_ in self.result.get("slow_at", [])]

    def __enter__(self) -> Self:
        if self.path is not None:
            super().__enter__()
        return self


if __name__ == "__main__":
    print(json.dumps(probe(Path(sys.argv[1]))))
