"""The servers `up` owns: the data-dir lock, embedded Redis and PostgreSQL, the webhook secret."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from shared.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    clear_discovery,
    read_discovery,
    write_discovery,
)

LOCK_FILE = "up.lock"


class AlreadyRunning(RuntimeError):
    """Another `intentflow up` owns this data dir."""


class DataDirLock:
    """An exclusive lock on the data dir, held as long as this `up` runs (the kernel drops it on death)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning naming the other owner's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyRunning(
                f"another `intentflow up` (pid {owner}) is running with data dir {self.path.parent}: "
                "stop it first, or give this one its own --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Drop the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Servers:
    """Redis and PostgreSQL for this run: embedded ones are started here and stopped by stop()."""

    data_dir: Path
    redis_url: str | None
    database_url: str | None
    redis: EmbeddedRedis | None = None
    postgres: EmbeddedPostgres | None = None
    discovery_written: bool = field(default=False)

    def start(self, say: Callable[[str], None] = print) -> tuple[str, str]:
        """Start an embedded server for each URL not configured; record them for other commands."""
        other = read_discovery(self.data_dir)
        if other is not None and other.pid != os.getpid() and _is_up(other.pid):
            raise AlreadyRunning(
                f"another `intentflow up` (pid {other.pid}) serves data dir {self.data_dir}: stop it first"
            )
        if self.redis_url is None:
            say(f"starting embedded Redis in {self.data_dir / 'redis'}")
            self.redis = EmbeddedRedis(self.data_dir, appendonly=True)
            self.redis_url = self.redis.start()
        if self.database_url is None:
            say(f"starting embedded PostgreSQL in {self.data_dir / 'postgres'}")
            self.postgres = EmbeddedPostgres(self.data_dir)
            self.database_url = self.postgres.start()
        write_discovery(self.data_dir, self.redis_url, self.database_url, os.getpid())
        self.discovery_written = True
        return self.redis_url, self.database_url

    def pids(self) -> list[int]:
        """Return the embedded servers' process ids."""
        found = [s.pid for s in (self.redis, self.postgres) if s is not None]
        return [pid for pid in found if pid is not None]

    def stop(self) -> None:
        """Forget the discovery record, then stop PostgreSQL and Redis (each even if the other fails)."""
        if self.discovery_written:
            clear_discovery(self.data_dir, os.getpid())
        errors: list[str] = []
        for server in (self.postgres, self.redis):
            if server is None:
                continue
            try:
                server.stop()
            except Exception as exc:  # stop the other one whatever happened to this one
                errors.append(f"{type(server).__name__}: {exc}")
        if errors:
            raise RuntimeError("; ".join(errors))


def _is_up(pid: int) -> bool:
    # The lock already keeps two `up`s apart; this catches an owner that predates it, and
    # ignores a stale record whose pid now belongs to some other program.
    try:
        return "up" in psutil.Process(pid).cmdline()
    except psutil.Error:
        return False


def webhook_secret(data_dir: Path) -> tuple[str, Path]:
    """Return the data dir's webhook secret, creating it (owner-only file) on first use."""
    path = data_dir / "webhook_secret"
    with contextlib.suppress(FileNotFoundError):
        value = path.read_text().strip()
        if value:
            return value, path
    value = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value, path


def write_endpoints(data_dir: Path, endpoints: dict[str, str | None]) -> Path:
    """Record where this run's HTTP services answer (up.json), for tools beside it."""
    path = data_dir / "up.json"
    scratch = path.with_name(f".up.json.{os.getpid()}")
    scratch.write_text(json.dumps({"pid": os.getpid(), **endpoints}, indent=2) + "\n")
    scratch.replace(path)
    return path


def clear_endpoints(data_dir: Path) -> None:
    """Remove up.json."""
    (data_dir / "up.json").unlink(missing_ok=True)
