"""A probe run as a process of its own beside a measurement window.

The probe (a module run as `python -m MODULE ARGS…`: module_command) prints "ready" once it
probes, probes until its stdin says anything (or closes), then prints one JSON summary. Its own
process keeps its timing apart from the bench's event loop. Standard library only: the probe
processes import this module too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Self


def module_command(module: str, *args: str) -> list[str]:
    """The command that runs a probe module with this Python."""
    return [sys.executable, "-m", module, *args]


class ProbeProcess:
    """`with ProbeProcess(command) as p: …`, then `p.result` (`empty` if it gave nothing)."""

    def __init__(self, command: Sequence[str], *, empty: dict[str, Any] | None = None) -> None:
        self._command = list(command)
        self._empty = dict(empty or {})
        self.result: dict[str, Any] = dict(self._empty)
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":  # probing: the window may start
            self._proc.kill()
            self._proc.wait()
            raise RuntimeError(f"the probe {' '.join(self._command[1:])} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        out, _ = self._proc.communicate("stop\n", timeout=30)
        self.result = json.loads(out) if self._proc.returncode == 0 and out.strip() else dict(self._empty)
