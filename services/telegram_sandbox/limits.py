"""Telegram's flood control as the sandbox enforces it: pure, clock passed in.

The rule, with `leniency` L (default 0.9) so a client pacing itself exactly is not
punished by clock jitter; only accepted messages count, refused ones do not:

- per chat: refused when the chat's previous accepted message is less than
  `per_chat_interval * L` seconds old (1 s → 0.9 s);
- per group chat (negative chat id): refused when `group_max` messages were accepted
  for it within the last `group_window * L` seconds (20 per 60 s → 20 per 54 s);
- overall: refused when `global_max` messages were accepted within the last
  `global_window * L` seconds (30 per 1 s → 30 per 0.9 s).

A refusal carries `retry_after`: whole seconds (at least 1, as Telegram sends) until
the tightest exceeded limit frees up.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SandboxLimits:
    """Telegram's limits, scalable so tests can run them in seconds."""

    per_chat_interval: float = 1.0
    group_max: int = 20
    group_window: float = 60.0
    global_max: int = 30
    global_window: float = 1.0
    leniency: float = 0.9

    def __post_init__(self) -> None:
        if not 0 < self.leniency <= 1:
            raise ValueError("leniency must be in (0, 1]")
        if self.per_chat_interval < 0 or self.group_window < 0 or self.global_window < 0:
            raise ValueError("limit intervals and windows must be >= 0 seconds")
        if self.group_max < 1 or self.global_max < 1:
            raise ValueError("group_max and global_max must be >= 1")


def is_group(chat_id: int) -> bool:
    """Tell whether a chat id names a group or channel (negative, as in Telegram)."""
    return chat_id < 0


@dataclass
class FloodControl:
    """Remember accepted messages and refuse the ones that exceed the limits."""

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    _last: dict[int, float] = field(default_factory=dict)
    _groups: dict[int, deque[float]] = field(default_factory=dict)
    _global: deque[float] = field(default_factory=deque)

    def check(self, chat_id: int, now: float) -> float | None:
        """Return seconds to wait when a message to chat_id now would exceed a limit, else None."""
        lim = self.limits
        waits: list[float] = []
        last = self._last.get(chat_id)
        chat_gap = lim.per_chat_interval * lim.leniency
        if last is not None and now - last < chat_gap:
            waits.append(last + chat_gap - now)
        if is_group(chat_id):
            wait = _window_wait(
                self._groups.get(chat_id), lim.group_max, lim.group_window * lim.leniency, now
            )
            if wait is not None:
                waits.append(wait)
        wait = _window_wait(self._global, lim.global_max, lim.global_window * lim.leniency, now)
        if wait is not None:
            waits.append(wait)
        return max(waits) if waits else None

    def record(self, chat_id: int, now: float) -> None:
        """Count an accepted message to chat_id at now."""
        self._last[chat_id] = now
        if is_group(chat_id):
            self._groups.setdefault(chat_id, deque()).append(now)
        self._global.append(now)
        self._prune(now)

    def _prune(self, now: float) -> None:
        horizon = max(self.limits.group_window, self.limits.global_window, self.limits.per_chat_interval)
        cutoff = now - horizon
        while self._global and self._global[0] < cutoff:
            self._global.popleft()
        for chat_id, times in list(self._groups.items()):
            while times and times[0] < cutoff:
                times.popleft()
            if not times:
                del self._groups[chat_id]


def _window_wait(times: deque[float] | None, maximum: int, window: float, now: float) -> float | None:
    if not times:
        return None
    inside = [t for t in times if now - t < window]
    if len(inside) < maximum:
        return None
    # The oldest message that keeps the window full must leave it first.
    return inside[-maximum] + window - now


def retry_after_seconds(wait: float) -> int:
    """Round a wait up to whole seconds, at least 1, as the Bot API's retry_after is."""
    return max(1, math.ceil(wait))
