"""aiogram imported through the notifier builds its models on first use, with the eager schemas.

Each check runs in a fresh interpreter: whether aiogram was imported eagerly depends on what
the process imported first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

MESSAGE: dict[str, Any] = {
    "message_id": 12,
    "date": 1764072000,
    "chat": {"id": -1001234567890, "type": "supergroup", "title": "desk"},
    "from": {"id": 42, "is_bot": False, "first_name": "Ada", "username": "ada"},
    "text": "/brake fat finger",
    "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
    "reply_to_message": {
        "message_id": 11,
        "date": 1764071990,
        "chat": {"id": -1001234567890, "type": "supergroup", "title": "desk"},
        "text": "BUY SIGNAL",
        "entities": [{"type": "bold", "offset": 0, "length": 3}],
    },
}
UPDATES = {"ok": True, "result": [{"update_id": 7, "message": MESSAGE}]}
SENT = {"ok": True, "result": MESSAGE}

VALIDATE = f"""
import json
from aiogram.methods import Response
from aiogram.types import Message, Update
updates = Response[list[Update]].model_validate({UPDATES!r})
sent = Response[Message].model_validate({SENT!r})
report["updates"] = json.loads(updates.model_dump_json())
report["sent"] = json.loads(sent.model_dump_json())
"""


def run_python(*parts: str) -> dict[str, Any]:
    """Run the parts of a program in a fresh interpreter; return the `report` dict they fill."""
    code = "\n".join(textwrap.dedent(part) for part in parts)
    program = f"import json\nreport = {{}}\n{code}\nprint(json.dumps(report))\n"
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.splitlines()[-1]))


@pytest.fixture(scope="module")
def deferred() -> dict[str, Any]:
    return run_python(
        """
        from services.notifier.telegram import AiogramSender
        from aiogram.methods import SendMessage, SendPhoto
        from aiogram.types import Message, Sticker
        report["sticker_built_at_import"] = Sticker.__pydantic_complete__
        report["send_message_built_at_import"] = SendMessage.__pydantic_complete__
        AiogramSender("123456:" + "A" * 30, api_url="http://127.0.0.1:9")
        report["send_message_built_by_sender"] = SendMessage.__pydantic_complete__
        report["send_photo_built_by_sender"] = SendPhoto.__pydantic_complete__
        """,
        VALIDATE,
    )


def test_models_the_notifier_does_not_call_stay_unbuilt(deferred):
    assert deferred["sticker_built_at_import"] is False
    assert deferred["send_photo_built_by_sender"] is False


def test_the_sender_builds_the_methods_it_calls_when_it_is_made(deferred):
    assert deferred["send_message_built_at_import"] is False
    assert deferred["send_message_built_by_sender"] is True


def test_deferred_models_validate_as_an_eager_import_does(deferred):
    eager = run_python("import aiogram", VALIDATE)
    assert deferred["updates"] == eager["updates"]
    assert deferred["sent"] == eager["sent"]
    message = deferred["updates"]["result"][0]["message"]
    assert message["from_user"]["id"] == 42
    assert message["reply_to_message"]["entities"][0]["type"] == "bold"
