"""Stream and consumer-group names, and how an event sits in a stream entry.

An entry has two fields: `type` (the event's class name) and `event` (the event
as JSON). Any Redis client reads it with `json.loads(fields["event"])`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

SIGNALS = "signals"
ORDER_DECISIONS = "order-decisions"
DEAD_LETTER = "dead-letter"
# Not in the contract's table: operator notices (watchdog alerts, brake switches) for the notifier.
NOTICES = "notices"

GROUP_ORCHESTRATOR = "orchestrator"
GROUP_NOTIFIER = "notifier"

EVENT_FIELD = "event"
TYPE_FIELD = "type"

GROUPS: dict[str, tuple[str, ...]] = {
    SIGNALS: (GROUP_ORCHESTRATOR, GROUP_NOTIFIER),
    ORDER_DECISIONS: (GROUP_NOTIFIER,),
    DEAD_LETTER: (),
    NOTICES: (GROUP_NOTIFIER,),
}


@dataclass(frozen=True)
class StreamNames:
    """The contract's stream names under an optional key prefix (tests isolate runs with it)."""

    prefix: str = ""

    def key(self, stream: str) -> str:
        """Return the Redis key of a stream."""
        return f"{self.prefix}{stream}"

    @property
    def signals(self) -> str:
        return self.key(SIGNALS)

    @property
    def order_decisions(self) -> str:
        return self.key(ORDER_DECISIONS)

    @property
    def dead_letter(self) -> str:
        return self.key(DEAD_LETTER)

    @property
    def notices(self) -> str:
        return self.key(NOTICES)

    def all(self) -> dict[str, str]:
        """Map each stream name (the contract's three and `notices`) to its key."""
        return {name: self.key(name) for name in GROUPS}


def encode_entry(event: BaseModel) -> dict[str, str]:
    """Build the fields of a stream entry holding one event."""
    return {TYPE_FIELD: type(event).__name__, EVENT_FIELD: event.model_dump_json()}
