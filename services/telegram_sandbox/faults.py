"""Faults the sandbox injects on request, served in the order they were queued (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    TOO_MANY_REQUESTS = "429"
    SERVER_ERROR = "500"
    BAD_GATEWAY = "502"
    SLOW = "slow"
    BLOCKED = "403"


@dataclass
class Fault:
    """Answer the next `count` matching calls this way (count -1: until cleared)."""

    kind: FaultKind
    count: int = 1
    retry_after: int = 1
    delay: float = 2.0
    chat_id: int | None = None
    method: str = "sendMessage"

    def matches(self, method: str, chat_id: int | None) -> bool:
        """Tell whether this fault applies to a call of method for chat_id."""
        if self.method.lower() != method.lower():
            return False
        return self.chat_id is None or self.chat_id == chat_id


def parse_fault(body: Any) -> Fault:
    """Build a Fault from the JSON posted to /sandbox/faults; raise ValueError saying what is wrong."""
    if not isinstance(body, dict):
        raise ValueError('the body must be a JSON object such as {"kind": "429", "count": 5}')
    kinds = ", ".join(k.value for k in FaultKind)
    try:
        kind = FaultKind(str(body.get("kind")))
    except ValueError:
        raise ValueError(f"kind must be one of {kinds}, not {body.get('kind')!r}") from None
    try:
        count = int(body.get("count", 1))
        retry_after = int(body.get("retry_after", 1))
        delay = float(body.get("delay", 2.0))
        raw_chat = body.get("chat_id")
        chat_id = None if raw_chat is None else int(raw_chat)
    except (TypeError, ValueError):
        raise ValueError("count, retry_after, chat_id must be integers and delay a number") from None
    if count == 0 or count < -1:
        raise ValueError("count must be a positive number of calls, or -1 for until cleared")
    if retry_after < 0 or delay < 0:
        raise ValueError("retry_after and delay must be >= 0")
    method = str(body.get("method", "sendMessage"))
    return Fault(kind, count, retry_after, delay, chat_id, method)


class FaultQueue:
    """Faults in the order they were posted; each call takes from the first that matches."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Queue a fault behind the ones already queued."""
        self._faults.append(fault)

    def clear(self) -> None:
        """Forget every queued fault."""
        self._faults.clear()

    def take(self, method: str, chat_id: int | None) -> Fault | None:
        """Return the fault to serve for this call, if any, using up one of its count."""
        for index, fault in enumerate(self._faults):
            if fault.matches(method, chat_id):
                if fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        del self._faults[index]
                return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        """Describe the queued faults as JSON-ready dicts."""
        return [
            {"kind": f.kind.value, "count": f.count, "chat_id": f.chat_id, "method": f.method}
            for f in self._faults
        ]
