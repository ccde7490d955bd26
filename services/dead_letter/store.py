"""Reading `dead-letter` and replaying one of its entries onto the stream it came from.

Replay re-publishes the original entry's fields (`type`, `event`) unchanged with a new
entry id onto its original stream, so every group of that stream sees it again. That is
safe because every consumer is idempotent by `signal_id`: a signal already decided is
not decided twice, a message already sent is not sent twice.

A replayed entry is removed from `dead-letter` (XDEL) in the same MULTI/EXEC as the
XADD, so `dead-letter` only ever holds what still needs an operator, and a replay is
never half done. The log line and the command's output keep the new entry id. If the
entry is still bad it comes back to `dead-letter` under a new id, with the new reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from shared.events import DeadLetter, OperatorNotice, OrderDecided, SignalEmitted
from shared.streams import EVENT_FIELD, NOTICES, ORDER_DECISIONS, SIGNALS, StreamNames

MODELS: dict[str, type[BaseModel]] = {
    SIGNALS: SignalEmitted,
    ORDER_DECISIONS: OrderDecided,
    NOTICES: OperatorNotice,
}


class ReplayRefused(Exception):
    """The entry cannot be replayed as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Letter:
    """One `dead-letter` entry: its own id and the DeadLetter it holds (None when unreadable)."""

    id: str
    letter: DeadLetter | None
    raw: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        """Render for `dead-letter list --json`."""
        if self.letter is None:
            return {"id": self.id, "unreadable": self.raw}
        return {"id": self.id, **json.loads(self.letter.model_dump_json())}


def decode(entry_id: str, fields: dict[str, str]) -> Letter:
    """Decode one `dead-letter` entry; an unreadable one is kept raw."""
    try:
        letter = DeadLetter.model_validate_json(fields.get(EVENT_FIELD, ""))
    except ValidationError:
        return Letter(entry_id, None, dict(fields))
    return Letter(entry_id, letter, dict(fields))


async def list_letters(redis: Redis, names: StreamNames, count: int) -> list[Letter]:
    """Return the newest `count` dead-letter entries, newest first."""
    entries: Any = await redis.xrevrange(names.dead_letter, count=count)
    return [decode(str(i), dict(f)) for i, f in entries]


def original_stream(names: StreamNames, letter: DeadLetter) -> str:
    """Return the contract name (signals, order-decisions) of the letter's stream key."""
    for name, key in names.all().items():
        if key == letter.stream:
            return name
    raise ReplayRefused(
        f"the entry came from stream {letter.stream!r}, which is not a stream of this "
        f"deployment (prefix {names.prefix!r}); check INTENTFLOW_STREAM_PREFIX"
    )


def check_replayable(names: StreamNames, letter: DeadLetter) -> None:
    """Refuse an entry whose event still fails validation (it would only come straight back)."""
    model = MODELS.get(original_stream(names, letter))
    if model is None:
        raise ReplayRefused(f"entries of {letter.stream!r} are not consumed; nothing to replay onto")
    try:
        model.model_validate_json(letter.fields.get(EVENT_FIELD, ""))
    except ValidationError as exc:
        reason = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ReplayRefused(
            f"the entry is still not a valid {model.__name__} ({reason}); it would go straight "
            "back to dead-letter. Use --force to replay it anyway"
        ) from None


async def replay(
    redis: Redis, names: StreamNames, entry_id: str, *, force: bool = False
) -> tuple[DeadLetter, str]:
    """Re-publish a dead-letter entry onto its stream and remove it; return (letter, new entry id)."""
    found: Any = await redis.xrange(names.dead_letter, min=entry_id, max=entry_id)
    if not found:
        raise ReplayRefused(
            f"no entry {entry_id} in {names.dead_letter}; `intentflow dead-letter list` shows the ids "
            "(an entry already replayed has been removed)"
        )
    item = decode(str(found[0][0]), dict(found[0][1]))
    if item.letter is None:
        raise ReplayRefused(f"entry {entry_id} is not a DeadLetter event; nothing known to replay")
    letter = item.letter
    if not force:
        check_replayable(names, letter)
    else:
        original_stream(names, letter)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(letter.stream, dict(letter.fields))  # type: ignore[arg-type]
        pipe.xdel(names.dead_letter, entry_id)
        new_id, _ = await pipe.execute()
    return letter, str(new_id)
