"""What the sandbox remembers: messages it took, updates it holds, faults, limits and counts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.telegram_sandbox.faults import FaultQueue
from services.telegram_sandbox.limits import FloodControl, SandboxLimits

SUPERGROUP_BELOW = -1_000_000_000_000


def chat_json(chat_id: int) -> dict[str, Any]:
    """Describe a chat the way the Bot API does: private for positive ids, groups for negative."""
    if chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": "Operator"}
    kind = "supergroup" if chat_id <= SUPERGROUP_BELOW else "group"
    return {"id": chat_id, "type": kind, "title": f"Sandbox {kind} {chat_id}"}


@dataclass
class SandboxState:
    """Everything one sandbox holds; mutated only from the event loop."""

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    enforce_limits: bool = False
    console: bool = True
    clock: Callable[[], float] = time.monotonic
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20_000))
    faults: FaultQueue = field(default_factory=FaultQueue)
    counts: Counter[str] = field(default_factory=Counter)
    faults_served: Counter[str] = field(default_factory=Counter)
    updates: list[dict[str, Any]] = field(default_factory=list)
    updates_changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _next_message_id: dict[int, int] = field(default_factory=dict)
    polls_waiting: int = 0
    closing: bool = False
    _next_update_id: int = 1
    flood: FloodControl = field(init=False)

    def __post_init__(self) -> None:
        self.flood = FloodControl(self.limits)

    def set_limits(self, limits: SandboxLimits) -> None:
        """Replace the limits and forget what was counted against the old ones."""
        self.limits = limits
        self.flood = FloodControl(limits)

    def next_message_id(self, chat_id: int) -> int:
        """Return the next message id of chat_id: increasing per chat, from 1."""
        value = self._next_message_id.get(chat_id, 0) + 1
        self._next_message_id[chat_id] = value
        return value

    def store_message(self, chat_id: int, text: str, plain: str, parse_mode: str | None) -> dict[str, Any]:
        """Keep a message sent by the bot and return its Bot API `Message` JSON."""
        now = datetime.now(UTC)
        message: dict[str, Any] = {
            "message_id": self.next_message_id(chat_id),
            "from": self.bot_user(),
            "chat": chat_json(chat_id),
            "date": int(now.timestamp()),
            "text": plain,
        }
        self.messages.append(
            {
                "message_id": message["message_id"],
                "chat_id": chat_id,
                "chat_type": message["chat"]["type"],
                "text": text,
                "plain_text": plain,
                "parse_mode": parse_mode,
                "date": message["date"],
                "received_at": now.isoformat().replace("+00:00", "Z"),
            }
        )
        self.counts["received"] += 1
        if self.console:
            line = " ".join(plain.split())
            line = line if len(line) <= 300 else line[:299] + "…"
            stamp = now.strftime("%H:%M:%S")
            self.say(f"{stamp} -> chat {chat_id} #{message['message_id']}: {line}")
        return message

    async def add_update(self, chat_id: int, text: str, from_id: int | None) -> dict[str, Any]:
        """Queue an incoming message from a person for getUpdates and wake long polls."""
        update_id = self._next_update_id
        self._next_update_id += 1
        message: dict[str, Any] = {
            "message_id": self.next_message_id(chat_id),
            "from": {
                "id": from_id if from_id is not None else abs(chat_id),
                "is_bot": False,
                "first_name": "Operator",
            },
            "chat": chat_json(chat_id),
            "date": int(time.time()),
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        update = {"update_id": update_id, "message": message}
        async with self.updates_changed:
            self.updates.append(update)
            self.updates_changed.notify_all()
        if self.console:
            self.say(f"<- chat {chat_id} (incoming update {update_id}): {' '.join(text.split())[:300]}")
        return update

    async def close(self) -> None:
        """Answer every waiting long poll now, so shutdown does not wait for them."""
        async with self.updates_changed:
            self.closing = True
            self.updates_changed.notify_all()

    def confirm_updates(self, offset: int) -> list[dict[str, Any]]:
        """Forget updates below offset (as Telegram does) and return the rest, oldest first."""
        self.updates = [u for u in self.updates if u["update_id"] >= offset]
        return self.updates

    def log_request(self, method: str, chat_id: int | None, status: int, note: str = "") -> None:
        """Remember one Bot API call and its answer (never the token)."""
        self.requests.append(
            {
                "method": method,
                "chat_id": chat_id,
                "status": status,
                "note": note,
                "at": time.time(),
            }
        )
        self.counts[f"status_{status}"] += 1
        if status == 429:
            self.counts["429"] += 1

    def stats(self) -> dict[str, Any]:
        """Return the counters as JSON-ready data."""
        by_status = {k.removeprefix("status_"): v for k, v in self.counts.items() if k.startswith("status_")}
        return {
            "received": self.counts["received"],
            "send_requests": self.counts["send_requests"],
            "total_429": self.counts["429"],
            "limit_429": self.counts["limit_429"],
            "fault_429": self.faults_served["429"],
            "faults": dict(self.faults_served),
            "by_status": by_status,
            "faults_pending": len(self.faults.pending()),
            "updates_pending": len(self.updates),
            "polls_waiting": self.polls_waiting,
            "enforce_limits": self.enforce_limits,
        }

    def reset(self) -> None:
        """Forget messages, requests, faults, counters and updates."""
        self.messages.clear()
        self.requests.clear()
        self.faults.clear()
        self.counts.clear()
        self.faults_served.clear()
        self.updates.clear()
        self.flood = FloodControl(self.limits)

    @staticmethod
    def bot_user(bot_id: int = 1) -> dict[str, Any]:
        """Describe the sandbox bot as a Bot API `User`."""
        return {
            "id": bot_id,
            "is_bot": True,
            "first_name": "intentflow sandbox",
            "username": "intentflow_sandbox_bot",
        }

    def say(self, line: str) -> None:
        """Print one console line when the console is on."""
        if self.console:
            print(f"[telegram-sandbox] {line}", flush=True)
