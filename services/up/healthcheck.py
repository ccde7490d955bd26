"""Container healthchecks: `python -m services.up.healthcheck [SERVICE]`, exit 0 healthy, 1 not.

HTTP services must answer their health route on 127.0.0.1. The consumers (orchestrator,
notifier) must have a consumer of their group, named for this host, that talked to Redis
within the last minute: the consumer loop blocks at most CONSUMER_BLOCK_MS per read, so
a longer silence means the loop is stuck or Redis is unreachable. Without SERVICE the
check finds the `intentflow run SERVICE` (or `telegram-sandbox`) running in the container.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

CONSUMER_IDLE_LIMIT_MS = 60_000
KNOWN = ("signal-monitor", "orchestrator", "notifier", "diagnostics", "telegram-sandbox")


def running_service(processes: Sequence[Sequence[str]]) -> str | None:
    """Return the service named by the first `… run SERVICE` or `… telegram-sandbox` argv."""
    for argv in processes:
        for i, arg in enumerate(argv):
            if arg == "run" and i + 1 < len(argv) and argv[i + 1] in KNOWN:
                return argv[i + 1]
            if arg == "telegram-sandbox":
                return arg
    return None


def _http_ok(url: str) -> tuple[bool, str]:
    try:
        response = httpx.get(url, timeout=5.0)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"
    return response.status_code == 200, f"{url}: HTTP {response.status_code}"


def _consumer_ok(service: str) -> tuple[bool, str]:
    from redis import Redis
    from redis.exceptions import RedisError, ResponseError

    from shared.embedded import read_discovery
    from shared.settings import Settings
    from shared.streams import StreamNames

    settings = Settings()
    url = settings.redis.redis_url
    if url is None:
        found = read_discovery(settings.runtime.intentflow_data_dir)
        url = found.redis_url if found else None
    if url is None:
        return False, "REDIS_URL is not set"
    stream = StreamNames(settings.runtime.stream_prefix).signals
    mine = f"{service}-{socket.gethostname()}-"
    try:
        with Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5) as r:
            try:
                consumers = r.xinfo_consumers(stream, service)
            except ResponseError:  # no group yet: the service has not started reading
                consumers = []
            idle = [int(c["idle"]) for c in consumers if str(c["name"]).startswith(mine)]
            if idle and min(idle) < CONSUMER_IDLE_LIMIT_MS:
                return True, f"consumer {mine}* last read {min(idle)} ms ago"
            # Redis before 7.2 creates a consumer only once it reads an entry, and refreshes its
            # idle time only then: on a quiet stream, look for this host's blocked read instead.
            reading = _blocked_reads_from_here(r, url)
    except RedisError as exc:
        return False, f"redis: {type(exc).__name__}: {exc}"
    if reading is not None and reading * 1000 < CONSUMER_IDLE_LIMIT_MS:
        return True, f"an XREADGROUP from this host {reading} s ago (consumer {mine}* not listed)"
    seen = f"last read {min(idle)} ms ago" if idle else "none listed"
    return (
        False,
        f"consumer {mine}* in group {service} on {stream}: {seen}, and no recent XREADGROUP from here",
    )


def _blocked_reads_from_here(r: Any, url: str) -> int | None:
    """Return the fewest seconds since a connection from this host last ran XREADGROUP, if any."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    with socket.create_connection((host, port), timeout=5) as probe:
        here = probe.getsockname()[0]
    best: int | None = None
    for client in r.client_list():
        address = str(client.get("addr", ""))
        if address.rsplit(":", 1)[0] == here and client.get("cmd") == "xreadgroup":
            idle = int(client.get("idle", 0))
            best = idle if best is None else min(best, idle)
    return best


def check(service: str) -> tuple[bool, str]:
    """Return (healthy, what was seen) for service in this container."""
    from shared.settings import DiagnosticsSettings, TelegramSettings, WebhookSettings

    if service == "diagnostics":
        return _http_ok(f"http://127.0.0.1:{DiagnosticsSettings().diagnostics_port}/healthz")
    if service == "signal-monitor":
        return _http_ok(f"http://127.0.0.1:{WebhookSettings().webhook_port}/healthz")
    if service == "telegram-sandbox":
        return _http_ok(f"http://127.0.0.1:{TelegramSettings().telegram_sandbox_port}/sandbox/stats")
    if service in ("orchestrator", "notifier"):
        return _consumer_ok(service)
    raise ValueError(f"unknown service {service!r}; one of {', '.join(KNOWN)}")


def main(argv: Sequence[str]) -> int:
    """Check the named (or the running) service; print what was seen; return the exit code."""
    service = argv[0] if argv else None
    if service is None:
        cmdlines = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdlines.append(proc.info["cmdline"] or [])
        service = running_service(cmdlines)
    if service is None:
        print("unhealthy: no `intentflow run SERVICE` process found in this container")
        return 1
    try:
        healthy, seen = check(service)
    except ValueError as exc:
        print(f"unhealthy: {exc}")
        return 1
    print(f"{'healthy' if healthy else 'unhealthy'}: {service}: {seen}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
