"""Which dead letters can be replayed: every consumed stream's, while its event is valid."""

from __future__ import annotations

import pytest

from services.dead_letter.store import ReplayRefused, check_replayable
from shared.events import DeadLetter, NoticeKind, OperatorNotice
from shared.streams import StreamNames

NAMES = StreamNames("p:")


def letter(stream: str, event: str) -> DeadLetter:
    return DeadLetter(
        stream=NAMES.key(stream),
        entry_id="1-0",
        group="notifier",
        error="x",
        deliveries=5,
        fields={"event": event},
    )


def test_a_valid_notice_can_be_replayed() -> None:
    notice = OperatorNotice(kind=NoticeKind.RESOLVED)
    check_replayable(NAMES, letter("notices", notice.to_json()))


@pytest.mark.parametrize("stream", ["signals", "order-decisions", "notices"])
def test_an_invalid_event_is_refused_naming_its_model(stream: str) -> None:
    with pytest.raises(ReplayRefused, match="still not a valid"):
        check_replayable(NAMES, letter(stream, '{"kind": "NOPE"}'))


def test_dead_letter_itself_is_not_replayable() -> None:
    with pytest.raises(ReplayRefused, match="not consumed"):
        check_replayable(NAMES, letter("dead-letter", "{}"))
