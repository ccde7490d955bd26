"""Run child processes, prefix their output with their name, restart the ones that die, stop them all.

Each child gets a session of its own, so Ctrl-C on the terminal reaches only `up`, which
then stops the children in order (SIGTERM, up to 10 s, then SIGKILL). On Linux each child
also asks the kernel for SIGTERM should `up` itself die, so none outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from services.up.plan import STABLE_AFTER_S, describe_exit, restart_delay

STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1
_COLORS = ("36", "33", "35", "32", "34", "31")


@functools.cache
def _prctl() -> Callable[..., int] | None:
    # Looked up in the parent: the child, between fork and exec, must not dlopen (a lock
    # another thread held at fork time would never be released there).
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised command: its name, argv and environment, and its current process."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    crashes: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        """Return the running process's id."""
        if self.process is None or self.process.returncode is not None:
            return None
        return self.process.pid


class Console:
    """Writes lines to a stream, each after its source's name, in colour on a terminal."""

    def __init__(self, stream: TextIO, names: Sequence[str]) -> None:
        self.stream = stream
        self.width = max(len(n) for n in [*names, "up"])
        color = stream.isatty() and not os.environ.get("NO_COLOR")
        self._colors = {n: _COLORS[i % len(_COLORS)] for i, n in enumerate(names)} if color else {}
        if color:
            self._colors["up"] = "1"

    def line(self, name: str, text: str) -> None:
        """Write one line of name's output."""
        prefix = f"{name:<{self.width}} | "
        code = self._colors.get(name)
        if code:
            prefix = f"\x1b[{code}m{prefix}\x1b[0m"
        try:
            self.stream.write(prefix + text.rstrip("\n") + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass

    def say(self, text: str) -> None:
        """Write a line of `up`'s own."""
        for part in text.splitlines() or [""]:
            self.line("up", part)


class Supervisor:
    """Keeps every child running until stop() is called, then stops them in order."""

    def __init__(self, console: Console, *, stop_timeout: float = STOP_TIMEOUT_S) -> None:
        self.console = console
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []
        self._stopping = asyncio.Event()
        self._kill_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        """Start name now and keep it running."""
        child = Child(name, list(argv), dict(env))
        self.children.append(child)
        self._tasks.append(asyncio.create_task(self._keep(child), name=f"keep-{name}"))
        return child

    def stop(self) -> None:
        """Begin the orderly stop (first call) or kill everything now (second call)."""
        if self._stopping.is_set():
            if not self._kill_now.is_set():
                self.console.say("second stop request: killing the children now")
                self._kill_now.set()
            return
        self.console.say(
            f"stopping: SIGTERM to every child (up to {self.stop_timeout:.0f}s each, then SIGKILL), "
            "then the servers; press Ctrl-C again to kill the children now"
        )
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def wait_stopped(self, order: Sequence[Sequence[str]]) -> None:
        """Wait for stop(), then stop the children group by group in the given order (others last)."""
        await self._stopping.wait()
        named = {n for group in order for n in group}
        groups = [list(g) for g in order] + [[c.name for c in self.children if c.name not in named]]
        for group in groups:
            await asyncio.gather(*(self._end(c) for c in self.children if c.name in group))
        # The keepers end by themselves once their child's output is drained; cancel stragglers.
        _, pending = await asyncio.wait(self._tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _spawn(self, child: Child) -> asyncio.subprocess.Process:
        linux = sys.platform.startswith("linux") and _prctl() is not None
        process = await asyncio.create_subprocess_exec(
            *child.argv,
            env=dict(child.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if linux else None,
            limit=1 << 20,
        )
        child.process = process
        child.starts += 1
        child.pids.append(process.pid)
        return process

    async def _pump(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            try:
                raw = await process.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue  # a line over 1 MiB: skip it rather than stall the child on a full pipe
            if not raw:
                return
            self.console.line(child.name, raw.decode(errors="replace"))

    async def _keep(self, child: Child) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                process = await self._spawn(child)
            except OSError as exc:
                self.console.say(f"{child.name} could not start: {exc}")
                code: int | None = None
            else:
                pump = asyncio.create_task(self._pump(child, process))
                if self._stopping.is_set():
                    await self._end(child)  # stop() came while this child was being started
                code = await process.wait()
                await pump
            if self._stopping.is_set():
                return
            child.crashes = 1 if time.monotonic() - started >= STABLE_AFTER_S else child.crashes + 1
            delay = restart_delay(child.crashes)
            self.console.say(
                f"{child.name} exited ({describe_exit(code)}); restarting it in {delay:.1f}s"
                + (f" ({child.crashes} crashes in a row)" if child.crashes > 1 else "")
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _end(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        waiter = asyncio.create_task(process.wait())
        killer = asyncio.create_task(self._kill_now.wait())
        done, _ = await asyncio.wait(
            {waiter, killer}, timeout=self.stop_timeout, return_when="FIRST_COMPLETED"
        )
        killer.cancel()
        if waiter not in done:
            self.console.say(f"{child.name} did not stop within {self.stop_timeout:.0f}s; killing it")
            _signal_group(process.pid, signal.SIGKILL)
            await waiter
        code = process.returncode
        if code not in (0, None):
            self.console.say(f"{child.name} stopped ({describe_exit(code)})")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The child leads its own session and process group: signal it and anything it started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def install_stop_handlers(stop: Callable[[], None]) -> None:
    """Call stop on SIGINT and SIGTERM (inside the running loop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
