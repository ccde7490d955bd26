"""The chaos suite: publish real load through the webhook, break things on purpose, then count.

`make chaos` (python -m tests.bench.chaos) runs every scenario with a few thousand signals
and prints a table and a JSON object (also written to bench-results/chaos.json);
tests/e2e/test_chaos.py runs the same scenarios with a few hundred.

Each run has its own servers, never the machine's: an embedded Redis with `appendonly yes`
and an embedded PostgreSQL, each on a fixed free port so it can be stopped and started
again on the same port. Each scenario gets its own database and stream prefix, and runs
every service as an OS process (`intentflow run …`), the Telegram sandbox as another.

Scenarios (faults injected while signals are being published):
  kill      three orchestrators and two notifiers; one of them SIGKILLed every few seconds
            and restarted;
  postgres  PostgreSQL stopped for 10 s in the middle, then started;
  redis     Redis stopped and restarted from its append-only file;
  telegram  the sandbox answering 429 and 500 in bursts;
  poison    invalid entries XADDed by hand into `signals` and `order-decisions`.

Once quiet (every group drained, every intent decided, every message recorded) it counts
from the database, the sandbox and `dead-letter`, and runs the real `intentflow verify`.
A scenario passes when: one intent per published signal, no second order for any intent,
one signal message per signal (row and line at the sandbox), one failure message per
failed order, every poison entry in `dead-letter` (once per group) and nothing else, verify
passing, and every service exiting 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from shared.db import migrate
from shared.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from shared.events import DeadLetter
from shared.redis import create_redis
from shared.streams import EVENT_FIELD, GROUP_NOTIFIER, GROUP_ORCHESTRATOR, StreamNames
from tests.support.procs import Proc, intentflow, run_cli

SCENARIOS = ("kill", "postgres", "redis", "telegram", "poison")
OK_SYMBOL = "BTC_USDT"
REJECTED_SYMBOL = "XRP_USDT"
CHAT_ID = "-1001234567890"
TERMINAL = ("ORDER_PLACED", "ORDER_FAILED", "DEDUP_SKIPPED", "BLOCKED_LIVE_TRADING")


@dataclass(frozen=True)
class Plan:
    """How big a run is: signals per scenario and the time they are spread over."""

    signals: int
    publish_seconds: float
    failure_share: float = 0.05
    postgres_outage_s: float = 10.0
    redis_outage_s: float = 5.0
    kill_every_s: float = 3.0
    telegram_bursts: int = 4
    quiet_timeout_s: float = 300.0
    concurrency: int = 16


SHORT = Plan(signals=250, publish_seconds=15.0)
FULL = Plan(signals=3000, publish_seconds=60.0, telegram_bursts=10)


@dataclass
class Figures:
    """What one scenario ends with; `problems` is empty exactly when it passed."""

    scenario: str
    published: int = 0
    webhook_retries: int = 0
    intents: int = 0
    duplicate_intents: int = 0
    undecided_intents: int = 0
    placed: int = 0
    failed: int = 0
    exchange_orders: int = 0
    max_orders_per_intent: int = 0
    signal_message_rows: int = 0
    signal_lines_at_sandbox: int = 0
    resent_lines: int = 0
    failure_messages: int = 0
    failure_lines_at_sandbox: int = 0
    poison_entries: int = 0
    dead_letter_entries: int = 0
    verify_exit: int | None = None
    verify_verdict: str = ""
    faults_injected: int = 0
    seconds_to_quiet: float | None = None
    catch_up_s: float | None = None
    entries_claimed: int = 0
    dead_consumers_removed: int = 0
    exit_codes: dict[str, int] = field(default_factory=dict)
    tracebacks: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------- servers


class ChaosServers:
    """This run's own Redis (append-only) and PostgreSQL, on ports that survive a restart."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.redis = EmbeddedRedis(root, appendonly=True, port=free_port())
        self.postgres = EmbeddedPostgres(root, database="chaos", port=free_port())

    def start(self) -> None:
        """Start both servers (blocking)."""
        self.redis.start()
        self.postgres.start()

    def stop(self) -> None:
        """Stop both servers (blocking)."""
        with contextlib.suppress(Exception):
            self.redis.stop()
        with contextlib.suppress(Exception):
            self.postgres.stop()

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis._fixed_port}/0"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.postgres._fixed_port}/{name}"

    async def create_database(self, name: str) -> str:
        """Create and migrate a database of this name; return its URL."""
        conn = await asyncpg.connect(self.database_url("postgres"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        url = self.database_url(name)
        await asyncio.to_thread(migrate, url)
        return url


# ---------------------------------------------------------------- one scenario's processes


@dataclass
class Deployment:
    """The processes of one scenario and how to reach them."""

    env: dict[str, str]
    log_dir: Path
    webhook_url: str
    diagnostics_url: str
    sandbox_url: str
    orchestrators: list[Proc] = field(default_factory=list)
    notifiers: list[Proc] = field(default_factory=list)
    others: dict[str, Proc] = field(default_factory=dict)

    def all(self) -> dict[str, Proc]:
        procs = dict(self.others)
        procs.update({f"orchestrator-{i}": p for i, p in enumerate(self.orchestrators)})
        procs.update({f"notifier-{i}": p for i, p in enumerate(self.notifiers)})
        return procs


def scenario_env(servers: ChaosServers, database_url: str, prefix: str, data_dir: Path) -> dict[str, str]:
    """The environment every process of a scenario shares."""
    return {
        "REDIS_URL": servers.redis_url,
        "DATABASE_URL": database_url,
        "INTENTFLOW_STREAM_PREFIX": prefix,
        "INTENTFLOW_DATA_DIR": str(data_dir),
        "CLAIM_IDLE_MS": "1000",
        "CONSUMER_BLOCK_MS": "200",
        "MAX_DELIVERIES": "5",
        "LOG_FORMAT": "json",
        "TRADING_MODE": "paper",
        "PAPER_BALANCES": "USDT=1000000000",
        "PAPER_REJECT_SYMBOLS": REJECTED_SYMBOL,
        "DEDUP_WINDOW_SECONDS": "0",
        "WEBHOOK_SECRET": "chaos-" + secrets.token_hex(8),
        "WEBHOOK_RATE_PER_MIN": "10000000",
        "TELEGRAM_BOT_TOKEN": f"{random.randint(10**8, 10**9)}:AA{secrets.token_urlsafe(26)}",
        "TELEGRAM_CHAT_ID": CHAT_ID,
        "TELEGRAM_PER_CHAT_PER_S": "1000",
        "TELEGRAM_GROUP_PER_MIN": "1000000",
        "TELEGRAM_GLOBAL_PER_S": "1000",
        "BIND_HOST": "127.0.0.1",
    }


async def _wait_http(url: str, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.args} exited while starting:\n{proc.output()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code < 500:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n{proc.output()[-3000:]}")


async def _wait_log(proc: Proc, text: str, timeout: float = 60.0, after: int = 0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.output()[after:]:
            return
        if not proc.alive():
            raise RuntimeError(f"{proc.args} exited before logging {text!r}:\n{proc.output()[-3000:]}")
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{text!r} not logged within {timeout}s:\n{proc.output()[-3000:]}")


async def deploy(env: dict[str, str], log_dir: Path, orchestrators: int, notifiers: int) -> Deployment:
    """Start the sandbox, diagnostics, signal-monitor, orchestrators and notifiers; wait until ready."""
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    sandbox_port, webhook_port, diagnostics_port = free_port(), free_port(), free_port()
    env = {
        **env,
        "TELEGRAM_API_URL": f"http://127.0.0.1:{sandbox_port}",
        "WEBHOOK_PORT": str(webhook_port),
        "DIAGNOSTICS_PORT": str(diagnostics_port),
    }
    dep = Deployment(
        env=env,
        log_dir=log_dir,
        webhook_url=f"http://127.0.0.1:{webhook_port}",
        diagnostics_url=f"http://127.0.0.1:{diagnostics_port}",
        sandbox_url=f"http://127.0.0.1:{sandbox_port}",
    )

    def proc(name: str, *args: str) -> Proc:
        return Proc(intentflow(*args), env, log_dir / f"{name}.log").start()

    try:
        dep.others["sandbox"] = proc("sandbox", "telegram-sandbox", "--port", str(sandbox_port))
        dep.others["diagnostics"] = proc("diagnostics", "run", "diagnostics")
        dep.others["signal-monitor"] = proc("signal-monitor", "run", "signal-monitor")
        dep.orchestrators = [proc(f"orchestrator-{i}", "run", "orchestrator") for i in range(orchestrators)]
        dep.notifiers = [proc(f"notifier-{i}", "run", "notifier") for i in range(notifiers)]
        await _wait_http(f"{dep.sandbox_url}/sandbox/stats", dep.others["sandbox"])
        await _wait_http(f"{dep.diagnostics_url}/healthz", dep.others["diagnostics"])
        await _wait_http(f"{dep.webhook_url}/healthz", dep.others["signal-monitor"])
        await asyncio.gather(
            *(_wait_log(p, "[BOOT] order_intents table OK") for p in dep.orchestrators),
            *(_wait_log(p, "notifier consuming") for p in dep.notifiers),
        )
    except BaseException:
        await asyncio.to_thread(stop_all, dep, Figures(scenario="(failed start)"))
        raise
    return dep


def stop_all(dep: Deployment, figures: Figures) -> None:
    """SIGTERM every process; record exit codes; note any that did not exit 0 or left a traceback."""
    procs = dep.all()
    order = [n for n in procs if n not in ("sandbox",)] + ["sandbox"]
    for name in order:
        proc = procs[name]
        if proc.popen is not None and proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
    for name in order:
        code = _wait_exit(procs[name], timeout=15)
        figures.exit_codes[name] = code
        if code != 0:
            figures.problems.append(f"{name} exited {code} on SIGTERM (log {procs[name].log_path})")
    for name, proc in procs.items():
        claimed, removed = claims(proc.output())
        figures.entries_claimed += claimed
        figures.dead_consumers_removed += removed
        found = crashes(proc.output())
        figures.tracebacks += found
        if found:
            figures.problems.append(f"{name} logged {found} error(s) with a traceback (log {proc.log_path})")


def claims(output: str) -> tuple[int, int]:
    """Count entries claimed from idle consumers and dead consumer names removed, from the logs."""
    claimed = removed = 0
    for line in output.splitlines():
        if "claimed idle entries" in line or "removed dead consumer" in line:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == "claimed idle entries":
                    claimed += int(record.get("entries", 0))
                elif record.get("event") == "removed dead consumer":
                    removed += 1
    return claimed, removed


def crashes(output: str) -> int:
    """Count tracebacks logged at error level or printed raw (asyncpg's own pool warnings aside)."""
    found = 0
    for line in output.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("exception") and record.get("level") in ("error", "critical"):
                    found += 1
        elif line.startswith("Traceback (most recent call last)"):
            found += 1
    return found


def _wait_exit(proc: Proc, timeout: float) -> int:
    # One SIGTERM only, as Docker sends: a second would hit a process already tearing down.
    assert proc.popen is not None
    try:
        return proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        proc.popen.wait(5)
        return -9


# ---------------------------------------------------------------- load


@dataclass
class Published:
    """Signals the webhook accepted (202), by signal_id: (symbol, strategy)."""

    accepted: dict[str, tuple[str, str]] = field(default_factory=dict)
    retries: int = 0
    refused: list[str] = field(default_factory=list)


async def publish(dep: Deployment, scenario: str, plan: Plan, out: Published) -> None:
    """POST plan.signals signals to the webhook, spread over plan.publish_seconds; retry 503s."""
    secret = dep.env["WEBHOOK_SECRET"]
    every = plan.publish_seconds / max(plan.signals, 1)
    failing_every = round(1 / plan.failure_share) if plan.failure_share > 0 else 0
    gate = asyncio.Semaphore(plan.concurrency)
    start = time.monotonic()

    async def one(http: httpx.AsyncClient, index: int) -> None:
        symbol = REJECTED_SYMBOL if failing_every and index % failing_every == 0 else OK_SYMBOL
        body = {
            "secret": secret,
            "signal_id": str(uuid.uuid4()),
            "symbol": symbol,
            "side": "BUY",
            "price": str(100 + index % 50),
            "strategy": f"chaos.{scenario}.{index:06d}",
        }
        async with gate:
            for attempt in range(600):
                try:
                    response = await http.post(f"{dep.webhook_url}/webhook", json=body)
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 202:
                    out.accepted[body["signal_id"]] = (symbol, body["strategy"])
                    return
                if response is not None and response.status_code not in (429, 502, 503):
                    out.refused.append(f"{response.status_code}: {response.text[:200]}")
                    return
                out.retries += 1
                await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))
            out.refused.append(f"{body['signal_id']}: never accepted")

    async with httpx.AsyncClient(timeout=30.0) as http:
        tasks = []
        for index in range(plan.signals):
            delay = start + index * every - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, index)))
        await asyncio.gather(*tasks)


# ---------------------------------------------------------------- faults


FaultFn = Callable[[Deployment, ChaosServers, Plan, "Chaos"], Coroutine[Any, Any, None]]


@dataclass
class Chaos:
    """What a fault task did, for the figures."""

    injected: int = 0
    poison: list[tuple[str, str]] = field(default_factory=list)  # (stream key, entry id)
    last_start: dict[str, int] = field(default_factory=dict)  # log path: log length at restart
    readiness: list[str] = field(default_factory=list)  # what /readyz got wrong
    published: Published = field(default_factory=lambda: Published())
    database_url: str | None = None
    catch_up_s: float | None = None
    notifier_kills: int = 0


async def kill_and_restart(dep: Deployment, servers: ChaosServers, plan: Plan, chaos: Chaos) -> None:
    """SIGKILL one orchestrator or notifier every few seconds and start it again."""
    rng = random.Random(7)
    deadline = time.monotonic() + plan.publish_seconds
    victims = dep.orchestrators + dep.notifiers
    while time.monotonic() < deadline:
        await asyncio.sleep(plan.kill_every_s * rng.uniform(0.7, 1.3))
        victim = rng.choice(victims)
        victim.kill()
        chaos.injected += 1
        chaos.notifier_kills += victim in dep.notifiers
        await asyncio.sleep(0.3)
        chaos.last_start[str(victim.log_path)] = len(victim.output())
        victim.start()


async def _readiness(urls: list[str], want: int, seconds: float) -> list[str]:
    """Poll each /readyz until it answers `want`; return those that did not within seconds."""
    deadline = time.monotonic() + seconds
    left = list(urls)
    async with httpx.AsyncClient(timeout=2.0) as http:
        while left and time.monotonic() < deadline:
            for url in list(left):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url)).status_code == want:
                        left.remove(url)
            await asyncio.sleep(0.1)
    return left


async def _outage(
    stop: Callable[[], None], start: Callable[[], Any], seconds: float, urls: list[str], chaos: Chaos
) -> None:
    await asyncio.to_thread(stop)
    chaos.injected += 1
    began = time.monotonic()
    for url in await _readiness(urls, 503, seconds):
        chaos.readiness.append(f"{url} never answered 503 while the server was down")
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - began)))
    await asyncio.to_thread(start)
    back = time.monotonic()
    for url in await _readiness(urls, 200, 30.0):
        chaos.readiness.append(f"{url} not ready again within 30 s of the server's return")
    chaos.catch_up_s = await _caught_up(chaos, back)


async def _caught_up(chaos: Chaos, since: float, timeout: float = 120.0) -> float | None:
    """Seconds from `since` until every signal accepted by then is decided and announced."""
    assert chaos.database_url is not None
    target = len(chaos.published.accepted)
    while time.monotonic() - since < timeout:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn = await asyncpg.connect(chaos.database_url, timeout=5)
            try:
                decided = await conn.fetchval("SELECT count(*) FROM order_intents WHERE status <> 'PENDING'")
                sent = await conn.fetchval("SELECT count(*) FROM telegram_messages WHERE kind = 'SIGNAL'")
            finally:
                await conn.close()
            if decided >= target and sent >= target:
                return round(time.monotonic() - since, 2)
        await asyncio.sleep(0.1)
    return None


async def postgres_outage(dep: Deployment, servers: ChaosServers, plan: Plan, chaos: Chaos) -> None:
    """Stop PostgreSQL a third of the way in for plan.postgres_outage_s, then start it."""
    await asyncio.sleep(plan.publish_seconds / 3)
    urls = [f"{dep.diagnostics_url}/readyz"]
    await _outage(servers.postgres.stop, servers.postgres.start, plan.postgres_outage_s, urls, chaos)


async def redis_restart(dep: Deployment, servers: ChaosServers, plan: Plan, chaos: Chaos) -> None:
    """Stop Redis a third of the way in (SIGTERM flushes the AOF) and start it from the AOF."""
    await asyncio.sleep(plan.publish_seconds / 3)
    urls = [f"{dep.diagnostics_url}/readyz", f"{dep.webhook_url}/readyz"]
    await _outage(servers.redis.stop, servers.redis.start, plan.redis_outage_s, urls, chaos)


async def telegram_bursts(dep: Deployment, servers: ChaosServers, plan: Plan, chaos: Chaos) -> None:
    """Have the sandbox answer bursts of 429 (retry_after 1) and 500 while signals flow."""
    gap = plan.publish_seconds / (plan.telegram_bursts + 1)
    async with httpx.AsyncClient(timeout=10.0) as http:
        for burst in range(plan.telegram_bursts):
            await asyncio.sleep(gap)
            # A burst is a few refusals in a row: the notifier's backoff doubles per refusal of
            # the same message, so a long run of 500s measures the backoff cap, not delivery.
            fault: dict[str, Any] = (
                {"kind": "429", "count": 3, "retry_after": 1}
                if burst % 2 == 0
                else {"kind": "500", "count": 3}
            )
            response = await http.post(f"{dep.sandbox_url}/sandbox/faults", json=fault)
            response.raise_for_status()
            chaos.injected += int(fault["count"])


def poison_entries(index: int) -> dict[str, str]:
    """One of several kinds of entry no consumer can decode."""
    good = {
        "signal_id": str(uuid.uuid4()),
        "symbol": OK_SYMBOL,
        "side": "BUY",
        "price": "100",
        "strategy": f"poison.{index}",
        "source": "manual",
        "emitted_at": "2026-01-01T00:00:00Z",
    }
    kinds: list[dict[str, str]] = [
        {"type": "SignalEmitted", "event": "not json at all"},
        {"type": "SignalEmitted"},
        {"type": "SignalEmitted", "event": json.dumps({**good, "side": "HOLD"})},
        {"type": "SignalEmitted", "event": json.dumps({**good, "price": "-1"})},
        {"type": "SignalEmitted", "event": json.dumps({**good, "signal_id": "not-a-uuid"})},
        {"type": "SignalEmitted", "event": "[1, 2, 3]"},
        {"type": "SignalEmitted", "event": "{}"},
    ]
    return kinds[index % len(kinds)]


async def poison(dep: Deployment, servers: ChaosServers, plan: Plan, chaos: Chaos) -> None:
    """XADD invalid entries by hand into `signals` (both groups) and `order-decisions`, spread out."""
    names = StreamNames(dep.env["INTENTFLOW_STREAM_PREFIX"])
    count = max(7, plan.signals // 50)
    redis = create_redis(servers.redis_url)
    try:
        for index in range(count):
            await asyncio.sleep(plan.publish_seconds / (count + 1))
            stream = names.order_decisions if index % 5 == 4 else names.signals
            fields: Any = poison_entries(index)
            if stream == names.order_decisions:
                fields = {"type": "OrderDecided", "event": json.dumps({"signal_id": str(uuid.uuid4())})}
            entry_id = str(await redis.xadd(stream, fields))
            chaos.poison.append((stream, entry_id))
            chaos.injected += 1
    finally:
        await redis.aclose()


SCENARIO_SETUP: dict[str, tuple[int, int, FaultFn, str]] = {
    "kill": (3, 2, kill_and_restart, "3 orchestrators + 2 notifiers, one SIGKILLed every few s"),
    "postgres": (1, 1, postgres_outage, "PostgreSQL stopped for 10 s mid-run"),
    "redis": (1, 1, redis_restart, "Redis stopped, restarted from its AOF"),
    "telegram": (1, 1, telegram_bursts, "sandbox answers 429/500 in bursts"),
    "poison": (1, 1, poison, "invalid entries XADDed into the streams"),
}


# ---------------------------------------------------------------- quiet and counting


async def _group_done(redis: Redis, stream: str, group: str) -> bool:
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except Exception:
        return False
    info = next((g for g in groups if g["name"] == group), None)
    if info is None or int(info["pending"]) != 0:
        return False
    last: Any = await redis.xrevrange(stream, "+", "-", count=1)
    return not last or info["last-delivered-id"] == last[0][0]


async def quiet(redis: Redis, pool: asyncpg.Pool, names: StreamNames, published: int) -> bool:
    """Tell whether everything published has been consumed, decided and announced."""
    try:
        for stream, group in (
            (names.signals, GROUP_ORCHESTRATOR),
            (names.signals, GROUP_NOTIFIER),
            (names.order_decisions, GROUP_NOTIFIER),
        ):
            if not await _group_done(redis, stream, group):
                return False
        row = await pool.fetchrow(
            """SELECT count(*) FILTER (WHERE status = ANY($1::text[])) AS decided,
                      count(*) FILTER (WHERE status = 'ORDER_FAILED') AS failed
               FROM order_intents""",
            list(TERMINAL),
        )
        assert row is not None
        if row["decided"] < published:
            return False
        sent = await pool.fetchrow(
            """SELECT count(DISTINCT signal_id) FILTER (WHERE kind = 'SIGNAL') AS signals,
                      count(DISTINCT signal_id) FILTER (WHERE kind = 'ORDER_FAILED') AS failures
               FROM telegram_messages"""
        )
        assert sent is not None
        return bool(sent["signals"] >= published and sent["failures"] >= row["failed"])
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False


async def count(
    figures: Figures, dep: Deployment, redis: Redis, pool: asyncpg.Pool, pub: Published, chaos: Chaos
) -> None:
    """Fill the figures from the database, the sandbox and `dead-letter`; note every problem."""
    problems = figures.problems
    names = StreamNames(dep.env["INTENTFLOW_STREAM_PREFIX"])
    published = set(pub.accepted)
    figures.published = len(published)
    figures.webhook_retries = pub.retries
    if pub.refused:
        problems.append(f"webhook refused {len(pub.refused)} signals, e.g. {pub.refused[:3]}")

    intents = await pool.fetch("SELECT id, signal_id::text AS sid, status FROM order_intents")
    per_signal = Counter(r["sid"] for r in intents)
    figures.intents = len(intents)
    figures.duplicate_intents = sum(n - 1 for n in per_signal.values() if n > 1)
    figures.undecided_intents = sum(1 for r in intents if r["status"] not in TERMINAL)
    figures.placed = sum(1 for r in intents if r["status"] == "ORDER_PLACED")
    figures.failed = sum(1 for r in intents if r["status"] == "ORDER_FAILED")
    missing = published - set(per_signal)
    extra = set(per_signal) - published
    if missing:
        problems.append(f"{len(missing)} published signals have no intent, e.g. {sorted(missing)[:3]}")
    if extra:
        problems.append(f"{len(extra)} intents for signals never published, e.g. {sorted(extra)[:3]}")
    if figures.duplicate_intents:
        problems.append(f"{figures.duplicate_intents} duplicate intents")
    if figures.undecided_intents:
        problems.append(f"{figures.undecided_intents} intents not in a terminal status")
    expected_failed = sum(1 for s in published if pub.accepted[s][0] == REJECTED_SYMBOL)
    if figures.failed != expected_failed:
        problems.append(f"{figures.failed} failed intents, expected {expected_failed} (rejected symbol)")

    orders = await pool.fetch("SELECT client_order_id, count(*) AS n FROM paper_orders GROUP BY 1")
    by_order = {r["client_order_id"]: int(r["n"]) for r in orders}
    figures.exchange_orders = sum(by_order.values())
    per_intent = [by_order.get(f"if-{r['id'].hex}", 0) for r in intents]
    figures.max_orders_per_intent = max(per_intent, default=0)
    if figures.max_orders_per_intent > 1:
        problems.append("an intent has a second exchange order")
    if figures.exchange_orders != figures.placed:
        problems.append(f"{figures.exchange_orders} exchange orders for {figures.placed} placed intents")

    rows = await pool.fetch(
        "SELECT signal_id::text AS sid, kind, blocked FROM telegram_messages WHERE kind IN ('SIGNAL', 'ORDER_FAILED')"
    )
    signal_rows = Counter(r["sid"] for r in rows if r["kind"] == "SIGNAL")
    failure_rows = Counter(r["sid"] for r in rows if r["kind"] == "ORDER_FAILED")
    figures.signal_message_rows = sum(signal_rows.values())
    figures.failure_messages = sum(failure_rows.values())
    if any(r["blocked"] for r in rows):
        problems.append(f"{sum(1 for r in rows if r['blocked'])} message rows are blocked (undelivered)")
    bad_rows = [s for s in published if signal_rows.get(s, 0) != 1]
    if bad_rows or set(signal_rows) - published:
        problems.append(
            f"{len(bad_rows)} signals without exactly one SIGNAL message row, e.g. {bad_rows[:3]}"
        )
    failed_ids = {r["sid"] for r in intents if r["status"] == "ORDER_FAILED"}
    if set(failure_rows) != failed_ids or any(n != 1 for n in failure_rows.values()):
        problems.append(f"{len(failure_rows)} ORDER_FAILED message rows for {len(failed_ids)} failed orders")

    lines = await sandbox_lines(dep.sandbox_url)
    strategies = {pub.accepted[s][1]: s for s in published}
    signal_lines: Counter[str] = Counter()
    failure_lines: Counter[str] = Counter()  # by the short signal id the line shows
    pattern = re.compile(r"chaos\.[a-z]+\.\d{6}")
    failed_short = {s[:8] for s in failed_ids}  # the short signal id each failure line shows
    for line in lines:
        if "SIGNAL" in line:
            for match in pattern.findall(line):
                signal_lines[match] += 1
        elif "ORDER FAILED" in line:
            named = [sid for sid in failed_short if sid in line]
            failure_lines.update(named or ["?"])
    figures.signal_lines_at_sandbox = sum(signal_lines.values())
    figures.failure_lines_at_sandbox = sum(failure_lines.values())
    missing_lines = [k for k in strategies if signal_lines.get(k, 0) == 0]
    figures.resent_lines = sum(n - 1 for n in (*signal_lines.values(), *failure_lines.values()) if n > 1)
    if missing_lines:
        problems.append(f"{len(missing_lines)} signals have no line at the sandbox, e.g. {missing_lines[:3]}")
    # Telegram takes no idempotency key: a notifier SIGKILLed after Telegram took a message and
    # before its row committed sends it again, whether its lines are signals or failures. One
    # such resend per notifier kill is the known window; a resend without a kill is a bug.
    if figures.resent_lines > chaos.notifier_kills:
        problems.append(
            f"{figures.resent_lines} lines sent more than once at the sandbox "
            f"({chaos.notifier_kills} notifier SIGKILLs could explain at most that many)"
        )
    unannounced = [s for s in failed_ids if failure_lines.get(s[:8], 0) == 0]
    unknown = set(failure_lines) - failed_short
    if unannounced or unknown:
        problems.append(
            f"{len(unannounced)} failed orders have no ORDER FAILED line at the sandbox, and "
            f"{len(unknown)} lines name no failed order ({len(failed_ids)} failed orders)"
        )

    letters: Any = await redis.xrange(names.dead_letter)
    figures.dead_letter_entries = len(letters)
    figures.poison_entries = len(chaos.poison)
    expected: Counter[tuple[str, str, str]] = Counter()
    for stream, entry_id in chaos.poison:
        groups = (
            (GROUP_NOTIFIER,) if stream == names.order_decisions else (GROUP_ORCHESTRATOR, GROUP_NOTIFIER)
        )
        for group in groups:
            expected[(stream, entry_id, group)] += 1
    found: Counter[tuple[str, str, str]] = Counter()
    for _, fields in letters:
        letter = DeadLetter.model_validate_json(fields[EVENT_FIELD])
        found[(letter.stream, letter.entry_id, letter.group)] += 1
    if found != expected:
        unexpected = found - expected
        absent = expected - found
        problems.append(
            f"dead-letter holds {sum(found.values())} entries, expected {sum(expected.values())} "
            f"(poison x group); unexpected {list(unexpected)[:3]}, absent {list(absent)[:3]}"
        )

    verdict = await asyncio.to_thread(
        run_cli, "verify", "--url", dep.diagnostics_url, "--hours", "2", "--grace-seconds", "0",
        env=dep.env, timeout=60,
    )  # fmt: skip
    figures.verify_exit = verdict.returncode
    figures.verify_verdict = (verdict.stdout.strip().splitlines() or [verdict.stderr.strip()])[0][:200]
    if verdict.returncode != 0:
        problems.append(
            f"intentflow verify exited {verdict.returncode}: {verdict.stdout} {verdict.stderr}"[:600]
        )


async def sandbox_lines(url: str) -> list[str]:
    """Every line of every message the sandbox received."""
    async with httpx.AsyncClient(timeout=30.0) as http:
        response = await http.get(f"{url}/sandbox/messages")
        response.raise_for_status()
        body = response.json()
    messages = body["messages"] if isinstance(body, dict) else body
    out: list[str] = []
    for message in messages:
        text = message.get("plain_text") or message.get("text") or ""
        out.extend(text.splitlines())
    return out


# ---------------------------------------------------------------- running


async def run_scenario(name: str, servers: ChaosServers, plan: Plan, work: Path) -> Figures:
    """Deploy, publish with the scenario's fault, wait for quiet, count, stop; return the figures."""
    orchestrators, notifiers, fault, _ = SCENARIO_SETUP[name]
    figures = Figures(scenario=name)
    run_id = uuid.uuid4().hex[:6]
    database_url = await servers.create_database(f"chaos_{name}_{run_id}")
    prefix = f"chaos{run_id}:"
    env = scenario_env(servers, database_url, prefix, work / f"{name}-data")
    dep = await deploy(env, work / f"{name}-logs", orchestrators, notifiers)
    pub = Published()
    chaos = Chaos(published=pub, database_url=database_url)
    names = StreamNames(prefix)
    try:
        fault_task = asyncio.create_task(fault(dep, servers, plan, chaos))
        await publish(dep, name, plan, pub)
        await fault_task

        # The last victim may still be starting: let it get going (it is the load we count).
        def since(proc: Proc) -> int:
            return chaos.last_start.get(str(proc.log_path), 0)

        await asyncio.gather(
            *(_wait_log(p, "[BOOT] order_intents table OK", after=since(p)) for p in dep.orchestrators),
            *(_wait_log(p, "notifier consuming", after=since(p)) for p in dep.notifiers),
        )
        figures.faults_injected = chaos.injected
        figures.problems.extend(chaos.readiness)
        figures.catch_up_s = chaos.catch_up_s
        started = time.monotonic()
        redis = create_redis(servers.redis_url)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        try:
            while not await quiet(redis, pool, names, len(pub.accepted)):
                if time.monotonic() - started > plan.quiet_timeout_s:
                    figures.problems.append(f"not quiet within {plan.quiet_timeout_s}s")
                    break
                await asyncio.sleep(0.25)
            else:
                figures.seconds_to_quiet = round(time.monotonic() - started, 2)
            await count(figures, dep, redis, pool, pub, chaos)
        finally:
            await pool.close()
            await redis.aclose()
    finally:
        await asyncio.to_thread(stop_all, dep, figures)
    return figures


COLUMNS = (
    ("scenario", "scenario"),
    ("published", "published"),
    ("intents", "intents"),
    ("duplicate_intents", "dup intents"),
    ("max_orders_per_intent", "orders/intent"),
    ("signal_message_rows", "signal msgs"),
    ("signal_lines_at_sandbox", "sandbox lines"),
    ("resent_lines", "resent"),
    ("failure_messages", "failure msgs"),
    ("poison_entries", "poison"),
    ("dead_letter_entries", "dead-letter"),
    ("verify_exit", "verify"),
    ("seconds_to_quiet", "quiet s"),
    ("catch_up_s", "catch-up s"),
    ("entries_claimed", "claimed"),
    ("faults_injected", "faults"),
)


def table(results: list[Figures]) -> str:
    """Render the figures as a plain-text table, one row per scenario."""
    header = [title for _, title in COLUMNS] + ["result"]
    rows = []
    for f in results:
        values = []
        for key, _ in COLUMNS:
            value = getattr(f, key)
            if key == "verify_exit":
                value = {0: "pass", 1: "FAIL", 2: "unreachable"}.get(value, str(value))
            values.append("-" if value is None else str(value))
        rows.append([*values, "ok" if f.ok else "FAILED"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def as_json(results: list[Figures], plan: Plan) -> dict[str, Any]:
    """The run as one JSON object: the plan and each scenario's figures."""
    return {
        "plan": asdict(plan),
        "scenarios": {f.scenario: {**asdict(f), "ok": f.ok} for f in results},
        "ok": all(f.ok for f in results),
    }


async def run_suite(plan: Plan, scenarios: tuple[str, ...], work: Path) -> list[Figures]:
    """Start this run's servers, run each scenario in turn, stop the servers; return the figures."""
    servers = ChaosServers(work / "servers")
    await asyncio.to_thread(servers.start)
    results = []
    try:
        for name in scenarios:
            print(f"chaos: {name}: {SCENARIO_SETUP[name][3]} ({plan.signals} signals)", file=sys.stderr)
            figures = await run_scenario(name, servers, plan, work)
            results.append(figures)
            print(
                f"chaos: {name}: {'ok' if figures.ok else 'FAILED: ' + '; '.join(figures.problems)}",
                file=sys.stderr,
            )
    finally:
        await asyncio.to_thread(servers.stop)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the full suite (or what the options say); print a table and JSON; exit 1 on any failure."""
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", type=int, default=FULL.signals, help="signals per scenario")
    parser.add_argument("--seconds", type=float, default=FULL.publish_seconds, help="publishing time")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) afterwards")
    parser.add_argument("--out", default="bench-results/chaos.json", help="where to write the JSON")
    args = parser.parse_args(argv)
    chosen = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SCENARIO_SETUP]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    plan = Plan(signals=args.signals, publish_seconds=args.seconds, telegram_bursts=FULL.telegram_bursts)
    # Outside /tmp/pytest-*'s 0700 folders: the embedded PostgreSQL runs as another user as root.
    work = Path(tempfile.mkdtemp(prefix="intentflow-chaos-"))
    os.chmod(work, 0o755)
    try:
        results = asyncio.run(run_suite(plan, chosen, work))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = as_json(results, plan)
    print(table(results))
    print(json.dumps(report, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if args.keep:
        print(f"logs kept in {work}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
