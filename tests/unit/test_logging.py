"""Log lines: JSON shape, secrets scrubbed, level filtering, exceptions, whole lines.

configure_logging sets process-wide state (structlog, the root logger, stderr), so
each case runs in a fresh interpreter and reads what it wrote to stderr.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from services.up.plan import dummy_bot_token
from shared.logging import configure_logging, scrub

ROOT = Path(__file__).resolve().parents[2]


def stderr_of(script: str, *, level: str = "INFO", fmt: str = "json", secret: str = "") -> str:
    """Run script after configure_logging('orchestrator') in a new interpreter; return its stderr."""
    prologue = textwrap.dedent(
        f"""
        import logging
        import structlog
        from shared.logging import configure_logging, get_logger, register_secrets
        register_secrets([{secret!r}])
        configure_logging("orchestrator", level={level!r}, fmt={fmt!r})
        log = get_logger("intentflow.test")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # log lines go to stderr only
    return done.stderr


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_utc_iso(stamp: str) -> None:
    assert stamp.endswith("Z")
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).utcoffset() is not None


def test_a_structlog_line_is_one_json_object_with_the_call_and_its_context() -> None:
    out = stderr_of(
        """
        structlog.contextvars.bind_contextvars(consumer="c-1")
        log.info("intent decided", signal_id="s-1", intent_id="i-1", symbol="BTCUSDT", status="PLACED", n=3)
        log.bind(stream="signals").warning("bound", extra={"a": [1, 2]})
        """
    )
    decided, bound = json_lines(out)
    assert set(decided) == {
        "event", "level", "timestamp", "service", "consumer",
        "signal_id", "intent_id", "symbol", "status", "n",
    }  # fmt: skip
    assert decided["event"] == "intent decided" and decided["level"] == "info"
    assert decided["service"] == "orchestrator" and decided["consumer"] == "c-1"
    assert (decided["signal_id"], decided["n"]) == ("s-1", 3)
    assert_utc_iso(decided["timestamp"])
    assert bound["level"] == "warning" and bound["stream"] == "signals" and bound["extra"] == {"a": [1, 2]}


def test_a_library_line_from_the_stdlib_comes_out_as_the_same_json() -> None:
    out = stderr_of('logging.getLogger("aiogram.event").warning("update %s handled in %d ms", "u-7", 3)')
    (line,) = json_lines(out)
    assert set(line) == {"event", "level", "timestamp", "service"}
    assert line["event"] == "update u-7 handled in 3 ms"
    assert line["level"] == "warning" and line["service"] == "orchestrator"
    assert_utc_iso(line["timestamp"])


def test_a_registered_secret_and_a_bot_token_never_appear_in_any_line() -> None:
    secret = f'pa"ss\\{secrets.token_hex(8)}'  # a quote and a backslash: escaped in JSON and repr
    token = dummy_bot_token()
    out = stderr_of(
        f"""
        secret, token = {secret!r}, {token!r}
        log.info("event with " + secret, value=secret, nested={{"deep": [secret, token]}}, url="/bot" + token)
        try:
            raise RuntimeError("failed with " + secret + " and " + token)
        except RuntimeError as exc:
            log.error("as a value", error=exc)
            log.exception("with a traceback")
            logging.getLogger("aiohttp.client").exception("library traceback")
        logging.getLogger("aiogram").warning("library line %s %s", secret, token)
        """,
        secret=secret,
        fmt="json",
    )
    lines = json_lines(out)
    assert len(lines) == 5
    assert all("***" in json.dumps(line) for line in lines)
    for hidden in (secret, json.dumps(secret)[1:-1], secret.split("\\")[1], token, token.split(":")[1]):
        assert hidden not in out
    assert "RuntimeError: failed with ***" in lines[1]["error"]
    assert "Traceback" in lines[2]["exception"] and "Traceback" in lines[3]["exception"]


def test_secrets_are_scrubbed_from_console_lines_too() -> None:
    secret = f"pw\\{secrets.token_hex(8)}"  # repr() doubles the backslash (in the list)
    token = dummy_bot_token()
    out = stderr_of(
        f"""
        log.warning("console " + {secret!r}, token={token!r}, value={secret!r}, nested=[{secret!r}])
        logging.getLogger("asyncpg").warning("library %s", {token!r})
        """,
        secret=secret,
        fmt="console",
    )
    first, second = out.splitlines()
    assert "console ***" in first and "[warning" in first and "service=orchestrator" in first
    assert "library ***" in second
    for hidden in (secret, repr(secret)[1:-1], secret.split("\\")[1], token, token.split(":")[1]):
        assert hidden not in out


def test_lines_below_the_level_are_dropped_for_structlog_and_the_stdlib_alike() -> None:
    out = stderr_of(
        """
        log.debug("structlog debug")
        log.info("structlog info")
        log.warning("structlog warning")
        logging.getLogger("aiohttp").info("stdlib info")
        logging.getLogger("aiohttp").error("stdlib error")
        """,
        level="WARNING",
    )
    assert [line["event"] for line in json_lines(out)] == ["structlog warning", "stdlib error"]


def test_debug_lines_appear_when_the_level_is_debug() -> None:
    out = stderr_of('log.debug("structlog debug", k=1)', level="debug")
    assert json_lines(out)[0]["level"] == "debug"


def test_an_exception_is_rendered_as_its_traceback() -> None:
    out = stderr_of(
        """
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("division failed", k=1)
            log.warning("kept going", exc_info=True)
        log.info("no exception here", exc_info=False)
        """
    )
    failed, kept, plain = json_lines(out)
    assert failed["level"] == "error" and failed["k"] == 1
    assert (
        failed["exception"].startswith("Traceback")
        and "ZeroDivisionError: division by zero" in failed["exception"]
    )
    assert kept["level"] == "warning" and "ZeroDivisionError" in kept["exception"]
    assert "exception" not in plain and "exc_info" not in plain


def test_lines_from_threads_and_both_paths_are_written_whole() -> None:
    out = stderr_of(
        """
        import threading
        def spam(n):
            for i in range(300):
                log.info("structlog", thread=n, i=i, pad="x" * 500)
                logging.getLogger("aiogram").info("stdlib %s %s %s", n, i, "y" * 500)
        threads = [threading.Thread(target=spam, args=(n,)) for n in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        """
    )
    lines = json_lines(out)  # every line parses: none was cut or mixed with another
    assert len(lines) == 4 * 300 * 2


def test_a_logger_made_before_configuration_follows_the_latest_configuration() -> None:
    script = """
        import shared.logging as logs
        early = logs.get_logger("early")
        logs.configure_logging("cli", level="WARNING", fmt="console")
        early.info("hidden at WARNING")
        early.warning("console line")
        logs.configure_logging("orchestrator", level="INFO", fmt="json")
        early.info("json line", k=1)
        """
    first, second = stderr_of(script, level="CRITICAL").splitlines()
    assert "console line" in first and not first.startswith("{")
    assert json.loads(second) | {"timestamp": None} == {
        "event": "json line", "k": 1, "level": "info", "service": "orchestrator", "timestamp": None
    }  # fmt: skip


def test_an_unknown_level_is_refused_with_the_levels_to_use() -> None:
    with pytest.raises(ValueError, match=r"LOUD.*DEBUG, INFO, WARNING"):
        configure_logging("orchestrator", level="LOUD")


def test_scrub_replaces_a_bot_token_and_leaves_other_text_alone() -> None:
    token = dummy_bot_token()
    assert scrub(f'{{"url":"/bot{token}/sendMessage"}}') == '{"url":"/bot***/sendMessage"}'
    plain = '{"event":"at 2026-01-01T10:20:30Z","port":"redis://127.0.0.1:6379"}'
    assert scrub(plain) == plain


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_log_each_writes_the_lines_one_call_per_row_writes(fmt: str) -> None:
    secret = f"s3cr3t-{secrets.token_hex(6)}"
    out = stderr_of(
        f"""
        from shared.logging import log_each
        structlog.contextvars.bind_contextvars(consumer="c-1")
        import uuid
        rows = [
            dict(signal_id=uuid.UUID(int=i), symbol="BTC_USDT", note={secret!r} if i == 1 else None)
            | (dict(consumer="its-own") if i == 2 else {{}})
            for i in range(3)
        ]
        for row in rows:
            log.info("intent decided", **row)
        log_each(log, "info", "intent decided", rows)
        log_each(log, "debug", "below the level", rows)
        log_each(log, "info", "no rows", [])
        """,
        fmt=fmt,
        secret=secret,
    )
    assert secret not in out
    lines = out.splitlines()
    assert len(lines) == 6
    if fmt == "json":
        one_by_one, at_once = json_lines("\n".join(lines[:3])), json_lines("\n".join(lines[3:]))
        for line in one_by_one + at_once:
            line.pop("timestamp")
        assert at_once == one_by_one
        assert [line["signal_id"] for line in at_once] == [str(uuid.UUID(int=i)) for i in range(3)]
        assert at_once[0]["service"] == "orchestrator" and at_once[0]["consumer"] == "c-1"
        assert at_once[2]["consumer"] == "its-own"  # a row's own field wins over the context's
    else:
        # Console lines start with their timestamp; the rest is the same.
        assert [line.split(" ", 2)[2] for line in lines[3:]] == [line.split(" ", 2)[2] for line in lines[:3]]
        assert f"signal_id={uuid.UUID(int=0)}" in lines[3] and "UUID(" not in out


def test_log_each_writes_a_row_orjson_refuses_as_one_call_would() -> None:
    out = stderr_of(
        """
        from shared.logging import log_each
        rows = [dict(signal_id="s-1", big=2**70), dict(signal_id="s-2", big=1)]
        for row in rows:
            log.info("intent decided", **row)
        log_each(log, "info", "intent decided", rows)
        """,
        fmt="json",
    )
    lines = json_lines(out)
    for line in lines:
        line.pop("timestamp")
    assert lines[2:] == lines[:2]
    assert lines[2]["big"] == 2**70 and lines[3]["event"] == "intent decided"
