"""Start intentflow commands as OS processes, exactly as compose would, and stop them as Docker does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

INTENTFLOW = [sys.executable, "-m", "services"]


class Proc:
    """One child process with its output in a log file."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = list(args)
        self.env = dict(env)
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        """Start (or restart) the process, appending to its log."""
        full_env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.args, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies without cleaning up."""
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; return the exit code (SIGKILL and -9 if it hangs)."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
                return -9
        return self.popen.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def intentflow(*args: str) -> list[str]:
    """The argv of an intentflow command run with this interpreter."""
    return [*INTENTFLOW, *args]


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 60.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one intentflow command to completion and capture its output."""
    return subprocess.run(
        intentflow(*args),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


@contextmanager
def services(
    specs: Sequence[tuple[str, Sequence[str]]], env: Mapping[str, str], log_dir: Path
) -> Iterator[dict[str, Proc]]:
    """Start named processes; on exit SIGTERM them all and fail loudly if one exits non-zero."""
    procs: dict[str, Proc] = {}
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        for name, argv in specs:
            procs[name] = Proc(argv, env, log_dir / f"{name}.log").start()
        yield procs
    finally:
        codes = {name: p.terminate() for name, p in procs.items()}
        bad = {n: c for n, c in codes.items() if c not in (0, -9) and c is not None}
        if bad:
            details = "\n".join(
                f"--- {n} (exit {c}) ---\n{procs[n].output()[-3000:]}" for n, c in bad.items()
            )
            raise AssertionError(f"processes exited badly: {bad}\n{details}")


def wait_for_log(proc: Proc, text: str, timeout: float = 30.0) -> None:
    """Block until a line containing text appears in the process's output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.output():
            return
        if not proc.alive():
            raise AssertionError(f"process exited before logging {text!r}:\n{proc.output()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged within {timeout}s:\n{proc.output()[-3000:]}")


async def await_log(proc: Proc, text: str, timeout: float = 30.0) -> None:
    """Like wait_for_log, but yields to the event loop (for servers the test itself runs)."""
    import asyncio

    await asyncio.to_thread(wait_for_log, proc, text, timeout)
