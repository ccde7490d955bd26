"""`make bench`: the raw limit and the product side by side, on fresh data, as one JSON object.

One process tree: this process publishes and observes; the services run as OS processes
(`intentflow run orchestrator`, `intentflow run notifier`, `intentflow telegram-sandbox
--enforce-limits`), the raw loop as its own process. Servers come from REDIS_URL /
DATABASE_URL (an admin URL: the bench creates its own database and drops it after) or are
started as the tests start them (tests/support/servers.py). Progress goes to stderr; the
result to stdout and to bench-results/latest.json.

Throughput is measured in BENCH_ROUNDS rounds, each a drain of the raw loop then one of the
orchestrator, back to back: a wall-clock figure over ~1 s on a shared VM moves by ±15 % from
one run to the next, and a pair taken together sees the same machine. `raw_baseline_per_s`
and `orchestrator_per_s` are the medians over the rounds, `ratio` is their quotient, and
`throughput_rounds` lists every round. Each latency window (raw loop, orchestrator) starts after
a CHECKPOINT and a sync, so that it does not pay for writing out what the drains left behind.

Environment knobs: BENCH_EVENTS (20000), BENCH_ROUNDS (3), BENCH_RATE (1000), BENCH_SECONDS
(20), BENCH_BURST (200), BENCH_SKIP_DIAGNOSTICS=1 (skip planting two million rows).

Each latency window runs beside a CPU-bound probe (tests/bench/stall_probe.py): how often a
fixed piece of runnable work took five times its time or more (the VM taking its vCPUs away,
or waits for a CPU others hold), and the time lost, as `raw_latency_machine_stalls` and
`latency_machine_stalls`, and the CPU used in it, in cores, as `raw_latency_cpu_cores` and
`latency_cpu_cores`: the whole machine, Redis and this process (publisher and reader); in the
orchestrator's window also the orchestrator and its PostgreSQL backends.

Each latency window also runs beside a disk probe (tests/bench/disk_probe.py), when the
database server runs on this machine: the intervals in which the disk's completed requests of
one kind had waited 10 ms or more on average (a stall that held every commit), as
`raw_latency_disk` and `latency_disk`, and how many of the window's signals over 10 ms waited
across one, as `raw_latency_over_10ms` and `latency_over_10ms`; and the ms of each window in
which some task on the machine waited for a CPU, for I/O or for memory (the kernel's pressure
stall totals), as `raw_latency_pressure_ms` and `latency_pressure_ms`.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from redis.asyncio import Redis

from shared.db import migrate
from shared.embedded import free_port
from shared.redis import create_redis
from shared.streams import GROUP_NOTIFIER, StreamNames
from tests.bench import bench_orchestrator, bench_telegram, raw_baseline
from tests.bench.disk_probe import DiskProbe, clear_of_slow_disk, database_stat_path, signals_across
from tests.bench.load import (
    CpuWindow,
    backend_pids,
    delete_keys,
    progress,
    publish_burst,
    redis_server_pids,
    run_loop,
    signal_entry,
)
from tests.bench.stall_probe import Probe
from tests.support import servers
from tests.support.procs import Proc, intentflow, wait_for_log

RESULTS = Path("bench-results")
GROUP_CHAT = "-1001234567890"
WEBHOOK_SECRET = "bench-webhook-secret"
RSS_EVERY_S = 0.25


class RssSampler:
    """Sample the resident memory of named processes on a thread until stopped."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[float, float]]] = {}
        self._procs: dict[str, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        """Sample the process from now on (once at once, so that a short watch has a figure)."""
        self._procs[name] = psutil.Process(pid)
        self.samples.setdefault(name, [])
        self._sample({name: self._procs[name]})

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling, with one last sample of every process still running."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._sample(dict(self._procs))

    def _run(self) -> None:
        while not self._stop.wait(RSS_EVERY_S):
            self._sample(dict(self._procs))

    def _sample(self, procs: dict[str, psutil.Process]) -> None:
        for name, proc in procs.items():
            try:
                rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
            self.samples[name].append((time.monotonic(), rss))

    def summary(self) -> tuple[dict[str, float], dict[str, bool], dict[str, Any]]:
        """Peak MB per process; flat = the second half's peak within 10% (+5 MB) of the first half's."""
        peaks: dict[str, float] = {}
        flat: dict[str, bool] = {}
        detail: dict[str, Any] = {}
        for name, samples in self.samples.items():
            if not samples:
                continue
            values = [rss for _, rss in samples]
            half = len(values) // 2 or 1
            first, second = max(values[:half]), max(values[half:] or values)
            peaks[name] = round(max(values), 1)
            flat[name] = second <= first * 1.10 + 5
            detail[name] = {
                "start": round(values[0], 1),
                "first_half_peak": round(first, 1),
                "second_half_peak": round(second, 1),
                "end": round(values[-1], 1),
                "samples": len(values),
            }
        return peaks, flat, detail


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def _wait_decided(redis: Redis, names: StreamNames, count: int) -> None:
    entries = [signal_entry(i, f"warm{uuid.uuid4().hex[:6]}") for i in range(count)]
    after = await bench_orchestrator._last_id(redis, names.order_decisions)
    ids = [json.loads(e["event"])["signal_id"] for e in entries]
    watcher = asyncio.create_task(
        bench_orchestrator.watch_decisions(redis, names.order_decisions, after, ids, 120)
    )
    await publish_burst(redis, names.signals, entries)
    seen = await watcher
    if len(seen) != count:
        raise RuntimeError(f"warm-up: only {len(seen)} of {count} signals were decided")


async def _start_group_at_end(redis: Redis, stream: str, group: str) -> None:
    # The notifier joins late: it announces the burst, not the earlier load.
    await redis.xgroup_create(stream, group, id="$", mkstream=True)


def service_env(redis_url: str, database_url: str, prefix: str, work: Path) -> dict[str, str]:
    """The environment of the services the bench runs: its servers and prefix, paper trading
    with balances no run spends, JSON logs."""
    return {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "INTENTFLOW_STREAM_PREFIX": prefix,
        "INTENTFLOW_DATA_DIR": str(work / "data"),
        "TRADING_MODE": "paper",
        "PAPER_BALANCES": "USDT=1000000000000",
        "LOG_FORMAT": "json",
    }


async def bench(redis_url: str, database_url: str, work: Path) -> dict[str, Any]:
    """Run every measurement against running service processes; return the figures."""
    events = int(os.environ.get("BENCH_EVENTS", "20000"))
    rate = float(os.environ.get("BENCH_RATE", "1000"))
    seconds = float(os.environ.get("BENCH_SECONDS", "20"))
    burst_count = int(os.environ.get("BENCH_BURST", "200"))
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    names = StreamNames(prefix)
    result: dict[str, Any] = {}

    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    if rounds < 1:
        raise ValueError(f"BENCH_ROUNDS must be 1 or more, not {rounds}")
    await raw_baseline.prepare(database_url)

    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    env = {
        **service_env(redis_url, database_url, prefix, work),
        "TELEGRAM_BOT_TOKEN": "123456789:AAbenchbenchbenchbenchbenchbench",
        "TELEGRAM_CHAT_ID": GROUP_CHAT,
        "TELEGRAM_API_URL": sandbox_url,
    }
    sampler = RssSampler()
    procs: dict[str, Proc] = {}
    redis = create_redis(redis_url)
    try:
        procs["orchestrator"] = Proc(
            intentflow("run", "orchestrator"), env, work / "orchestrator.log"
        ).start()
        wait_for_log(procs["orchestrator"], "orchestrator consuming", timeout=60)
        sampler.watch("orchestrator", procs["orchestrator"].pid)
        sampler.start()
        progress("orchestrator up; warming up with 1000 signals")
        await _wait_decided(redis, names, 1000)

        database = database_url.rsplit("/", 1)[-1]
        orchestrator = procs["orchestrator"].pid
        raws: list[dict[str, Any]] = []
        drains: list[dict[str, Any]] = []
        for n in range(rounds):
            progress(f"round {n + 1}/{rounds}: raw loop, then orchestrator, each draining {events}")
            raws.append(
                await raw_baseline.drain(redis, redis_url, database_url, f"{prefix}raw-drain-{n}", events)
            )
            drains.append(
                await bench_orchestrator.drain(redis, names, events, pids=[orchestrator], database=database)
            )
        raw = _median_by_rate(raws)
        drained = _median_by_rate(drains)
        result["raw_baseline_per_s"] = raw["per_s"]
        result["raw_cpu_us_per_event"] = raw["cpu_us_per_event"]
        result.update({f"orchestrator_{k}": v for k, v in drained.items()})
        result["ratio"] = round(drained["per_s"] / raw["per_s"], 3)
        result["throughput_rounds"] = [
            {
                "raw_per_s": r["per_s"],
                "orchestrator_per_s": d["per_s"],
                "ratio": round(d["per_s"] / r["per_s"], 3),
            }
            for r, d in zip(raws, drains, strict=True)
        ]
        progress(f"medians: raw {raw['per_s']}/s, orchestrator {drained['per_s']}/s, ratio {result['ratio']}")

        progress(f"raw loop latency: {rate:.0f} events/s for {seconds:.0f} s")
        checkpointed = await _write_out(database_url)
        disk_stat = await database_stat_path(database_url)
        with (
            Probe() as probe,
            DiskProbe(disk_stat) as disk,
            CpuWindow(bench=[os.getpid()], redis=redis_server_pids()) as cpu,
        ):
            raw_latency, raw_spans = await raw_baseline.latency(
                redis, redis_url, database_url, f"{prefix}raw-latency", rate=rate, seconds=seconds
            )
        result.update(raw_latency)
        result["raw_latency_machine_stalls"] = probe.result
        result["raw_latency_disk"] = disk.result
        result["raw_latency_over_10ms"] = signals_across(raw_spans, disk.slow_at)
        result["raw_latency_clear_of_slow_disk_ms"] = clear_of_slow_disk(raw_spans, disk.slow_at)
        result["raw_latency_cpu_cores"] = cpu.cores
        result["raw_latency_pressure_ms"] = cpu.pressure_ms

        progress(f"orchestrator throughput: {events} signals published while it consumes")
        live = await bench_orchestrator.throughput(
            redis, names, events, orchestrator_pid=orchestrator, database=database
        )
        result.update(
            {f"orchestrator_live_{k}": live[k] for k in ("per_s", "elapsed_s", "cpu_us_per_signal")}
        )

        progress(f"orchestrator latency: {rate:.0f} signals/s for {seconds:.0f} s")
        checkpointed = await _write_out(database_url) and checkpointed
        result["latency_after_checkpoint"] = checkpointed
        parties = CpuWindow(
            orchestrator=[orchestrator],
            postgres=backend_pids(database),
            redis=redis_server_pids(),
            bench=[os.getpid()],
        )
        scripts_before = await _script_calls(redis)
        with Probe() as probe, DiskProbe(disk_stat) as disk, parties as cpu:
            latency, spans = await bench_orchestrator.latency(redis, names, rate, seconds)
        result.update(latency)
        batches = await _script_calls(redis) - scripts_before
        result["latency_machine_stalls"] = probe.result
        result["latency_disk"] = disk.result
        result["latency_over_10ms"] = signals_across(spans, disk.slow_at)
        result["latency_clear_of_slow_disk_ms"] = clear_of_slow_disk(spans, disk.slow_at)
        result["latency_cpu_cores"] = cpu.cores
        result["latency_pressure_ms"] = cpu.pressure_ms
        result["latency_batches"] = batches
        if batches:
            result["latency_cpu_ms_per_batch"] = {
                name: round(cpu.seconds[name] / batches * 1000, 3)
                for name in ("orchestrator", "postgres", "redis")
                if name in cpu.seconds
            }
        progress(f"the machine during that window: {probe.result}; CPU in cores: {cpu.cores}")
        seen_disk = (
            f"{disk.result['slow']} slow completions (worst {disk.result['worst_ms']} ms)"
            if disk.result.get("device")
            else "not probed (not on this machine)"
        )
        progress(
            f"the disk: {seen_disk}; signals over 10 ms: {result['latency_over_10ms']};"
            f" ms in which some task waited: {cpu.pressure_ms}"
        )

        progress(f"scaling out: a second orchestrator process, {events} signals at once")
        procs["orchestrator-2"] = Proc(
            intentflow("run", "orchestrator"), env, work / "orchestrator-2.log"
        ).start()
        wait_for_log(procs["orchestrator-2"], "orchestrator consuming", timeout=60)
        sampler.watch("orchestrator-2", procs["orchestrator-2"].pid)
        two = await bench_orchestrator.drain(
            redis, names, events, pids=[orchestrator, procs["orchestrator-2"].pid], database=database
        )
        result["orchestrator_2_processes_per_s"] = two["per_s"]

        progress(
            f"telegram burst: {burst_count} signals through the webhook to one group chat, limits enforced"
        )
        webhook_port = free_port()
        monitor_env = {
            **env,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_PORT": str(webhook_port),
            "WEBHOOK_RATE_PER_MIN": "1000000",
        }
        procs["signal-monitor"] = Proc(
            intentflow("run", "signal-monitor"), monitor_env, work / "signal-monitor.log"
        ).start()
        sampler.watch("signal-monitor", procs["signal-monitor"].pid)
        webhook_url = f"http://127.0.0.1:{webhook_port}"
        await wait_http(f"{webhook_url}/healthz", procs["signal-monitor"])
        procs["telegram-sandbox"] = Proc(
            intentflow("telegram-sandbox", "--port", str(sandbox_port), "--enforce-limits"),
            env,
            work / "sandbox.log",
        ).start()
        sampler.watch("telegram-sandbox", procs["telegram-sandbox"].pid)
        await wait_http(f"{sandbox_url}/sandbox/stats", procs["telegram-sandbox"])
        await _start_group_at_end(redis, names.signals, GROUP_NOTIFIER)
        await _start_group_at_end(redis, names.order_decisions, GROUP_NOTIFIER)
        procs["notifier"] = Proc(intentflow("run", "notifier"), env, work / "notifier.log").start()
        sampler.watch("notifier", procs["notifier"].pid)
        wait_for_log(procs["notifier"], "notifier consuming", timeout=60)
        result.update(
            await bench_telegram.burst(
                redis,
                names,
                sandbox_url,
                count=burst_count,
                webhook=(f"{webhook_url}/webhook", WEBHOOK_SECRET),
            )
        )
    finally:
        sampler.stop()
        codes = {name: proc.terminate() for name, proc in procs.items()}
        await redis.aclose()
        await delete_keys(redis_url, prefix)
    peaks, flat, detail = sampler.summary()
    result["rss_mb"] = peaks
    result["rss_flat"] = flat
    result["rss_detail"] = detail
    result["exit_codes"] = codes
    for name, code in codes.items():
        if code != 0:
            progress(f"warning: {name} exited {code}; see {work / (name + '.log')}")
    return result


async def _script_calls(redis: Redis) -> int:
    """How many scripts (EVALSHA) the Redis server has run: one per batch the orchestrator settles.

    The server's own count, so any other client's scripts are counted too: on a Redis of its
    own, as here, the latency window's batches.
    """
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def _write_out(database_url: str) -> bool:
    """CHECKPOINT and sync, so that a latency window does not pay for the drains before it.

    The drains leave PostgreSQL ~100,000 signals' worth of dirty pages and WAL: written out
    during the next 20 s they put the raw loop's p99 at 10-30 ms instead of its ~4 ms
    alone. Both latency windows start after one. Returns False (and says so) when the role
    may not CHECKPOINT (PostgreSQL 15: superuser or pg_checkpoint).
    """
    started = time.monotonic()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError as exc:
        progress(f"no CHECKPOINT before the latency window ({exc}); it may pay for earlier writes")
        return False
    finally:
        await conn.close()
    await asyncio.to_thread(os.sync)
    progress(f"wrote out earlier writes (CHECKPOINT, sync) in {time.monotonic() - started:.2f} s")
    return True


def _median_by_rate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose per_s is the median (the lower middle one of an even count), whole."""
    ordered = sorted(runs, key=lambda r: r["per_s"])
    return ordered[(len(ordered) - 1) // 2]


async def wait_http(url: str, proc: Proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.args} exited:\n{proc.output()[-2000:]}")
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def main() -> None:
    """Run the benchmark; print the JSON object and write it to bench-results/latest.json."""
    started = time.monotonic()
    admin = servers.postgres_admin_url()
    redis_url = servers.redis_server_url()
    name = f"intentflow_bench_{uuid.uuid4().hex[:8]}"
    progress(f"fresh database {name}")
    database_url = servers.create_run_database(admin, name)
    result: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        migrate(database_url)
        with tempfile.TemporaryDirectory(prefix="intentflow-bench-") as work:
            try:
                result.update(run_loop(bench(redis_url, database_url, Path(work))))
            except BaseException:
                for log in sorted(Path(work).glob("*.log")):
                    progress(f"--- {log.name} (last lines) ---\n{log.read_text(errors='replace')[-3000:]}")
                raise
    finally:
        servers.drop_database(admin, name)
    if os.environ.get("BENCH_SKIP_DIAGNOSTICS") != "1":
        from tests.bench.bench_diagnostics import measure

        progress("diagnostics: planting 1M intents and 1M messages, timing the 12 h query")
        diag = measure(admin, redis_url)
        result["diagnostics_ms"] = diag["diagnostics_ms"]
        result["diagnostics_http_ms"] = diag["diagnostics_http_ms"]
        rss = diag.pop("rss")
        result.setdefault("rss_mb", {})["diagnostics"] = rss.pop("peak_mb")
        result.setdefault("rss_flat", {})["diagnostics"] = rss.pop("flat")
        result.setdefault("rss_detail", {})["diagnostics"] = rss
        result["diagnostics_detail"] = diag
    result["machine"] = machine()
    result["bench_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(result, default=str)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(text)


if __name__ == "__main__":
    main()
