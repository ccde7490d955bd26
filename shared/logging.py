"""Structured logs (structlog) for every service, with secrets scrubbed from every line.

structlog calls take a short path: filtered by level before any work, rendered once
(orjson), scrubbed once on the final text and written straight to stderr. Lines from
the standard library's loggers (aiogram, aiohttp, asyncpg, …) pass through a root
handler that runs the same processors and writes to the same stream.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
import structlog

REDACTED = "***"
_secrets: set[str] = set()
_secret_forms: tuple[str, ...] = ()
# No \b at either end: a token in a URL (/bot123456:AA…) has a letter just before it.
_BOT_TOKEN_RE = re.compile(r"\d{5,}:[A-Za-z0-9_-]{20,}")
# Every bot token contains this; searching for it first (a literal-led pattern) is
# an order of magnitude cheaper than the full pattern on a line that has none.
_BOT_TOKEN_HINT = re.compile(r":[A-Za-z0-9_-]{20}")
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z
_configuration: object | None = None  # a new token per configure_logging call
# What configure_logging set up, for log_each: the processors, the sink, the level number.
_pipeline: tuple[list[Any], _Lines, int] | None = None
_UNBUILT = object()


def register_secrets(values: Iterable[str | None]) -> None:
    """Add values that must never appear in a log line (tokens, keys, passwords)."""
    global _secret_forms
    for value in values:
        if value and len(value) >= 4:
            _secrets.add(value)
    # Lines are scrubbed after rendering, so also look for each secret as JSON and
    # repr() escape it (a quote or backslash in a password); longest first, so a
    # secret that contains another is replaced whole.
    forms = {form for s in _secrets for form in (s, json.dumps(s, ensure_ascii=False)[1:-1], repr(s)[1:-1])}
    _secret_forms = tuple(sorted(forms, key=len, reverse=True))


def scrub(text: str) -> str:
    """Replace every registered secret, and anything shaped like a bot token, in text."""
    for secret in _secret_forms:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if _BOT_TOKEN_HINT.search(text) is None:
        return text
    return _BOT_TOKEN_RE.sub(REDACTED, text)


def _as_json(value: Any) -> Any:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return repr(value)


def _add_level_and_time(
    _: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict["level"] = _LEVEL_OF_METHOD.get(method, method)
    # A datetime, not a string: orjson writes the ISO 8601 form (…Z) several times
    # faster than isoformat() does.
    event_dict["timestamp"] = datetime.now(UTC)
    return event_dict


def _render_json(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
    if "exc_info" in event_dict:
        event_dict = structlog.processors.format_exc_info(logger, method, event_dict)
    return scrub(_json_text(event_dict))


def _values_as_text(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # For the console: an exception as its type and message, a uuid as the JSON lines write it.
    for key, value in event_dict.items():
        if isinstance(value, BaseException):
            event_dict[key] = _as_json(value)
        elif isinstance(value, uuid.UUID):
            event_dict[key] = str(value)
    return event_dict


def _scrub_text(_: Any, __: str, text: str) -> str:
    return scrub(text)


class _Lines:
    """Writes each line whole and flushed to one stream, for structlog and stdlib alike."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.RLock()  # reentrant, as logging's own: a signal handler may log mid-write

    def msg(self, line: str) -> None:
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # stderr gone (closed pipe): a log line must not fail its caller
                pass

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _LinesHandler(logging.Handler):
    """Formats a stdlib record with structlog's processors and writes it as one line."""

    def __init__(self, lines: _Lines, processors: list[Any]) -> None:
        super().__init__()
        self._lines = lines
        self._processors = processors

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: Any = {"event": record.getMessage()}
            if record.exc_info:
                event["exc_info"] = record.exc_info
            if record.stack_info:
                event["stack_info"] = record.stack_info
            method = record.levelname.lower()
            for processor in self._processors:
                event = processor(None, method, event)
            self._lines.msg(event)
        except Exception:
            self.handleError(record)


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"log level {level!r} is unknown; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return number


def configure_logging(service: str, *, level: str = "INFO", fmt: str = "json") -> None:
    """Send structlog and stdlib logs to stderr as JSON (or console) lines, secrets scrubbed."""
    number = _level_number(level)
    processors: list[Any] = (
        [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _values_as_text,
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=False),
            _scrub_text,
        ]
        if fmt == "console"
        else [structlog.contextvars.merge_contextvars, _add_level_and_time, _render_json]
    )
    lines = _Lines(sys.stderr)
    structlog.configure(
        processors=processors,
        logger_factory=lambda *_: lines,
        wrapper_class=structlog.make_filtering_bound_logger(number),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers[:] = [_LinesHandler(lines, processors)]
    root.setLevel(number)
    for noisy in ("aiohttp.access", "uvicorn.access", "asyncio", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(service=service)
    global _configuration, _pipeline
    _configuration = object()
    _pipeline = (processors, lines, number)


class _Logger:
    """A module's logger: a structlog logger built once per configuration, not once per call.

    structlog's own lazy proxy costs a failed attribute lookup and a bind on every
    call, more than a filtered-out call itself; this one rebuilds only after
    configure_logging ran again.
    """

    __slots__ = ("_bound", "_built_for", "_name")

    def __init__(self, name: str | None) -> None:
        self._name = name
        self._bound: Any = None
        self._built_for: object = _UNBUILT

    def _logger(self) -> Any:
        if _configuration is None:  # structlog's defaults (tests): resolve per call, as structlog does
            return structlog.get_logger(self._name)
        if self._built_for is not _configuration:
            self._bound = structlog.get_logger(self._name).bind()
            self._built_for = _configuration
        return self._bound

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # a slot not yet set (copy, pickle): not a logger method
            raise AttributeError(name)
        return getattr(self._logger(), name)


def _forward(method: str) -> Any:
    def call(self: _Logger, event: str, *args: Any, **kw: Any) -> Any:
        logger = self._bound if self._built_for is _configuration else self._logger()
        return getattr(logger, method)(event, *args, **kw)

    call.__name__ = method
    return call


for _method in ("debug", "info", "warning", "warn", "error", "exception", "critical", "msg"):
    setattr(_Logger, _method, _forward(_method))


def log_each(logger: Any, method: str, event: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Log `event` once per row, with the row's fields: the lines `logger.<method>(event, **row)`
    writes for each row, written at once (one write, not one per line).

    For a batch's per-signal lines (each carries its signal_id): structlog's call chain is
    crossed once per line at the processors only, and the stream is written once.
    """
    level = logging.getLevelNamesMapping().get(_LEVEL_OF_METHOD.get(method, method).upper(), 0)
    if _pipeline is None or not isinstance(logger, _Logger):  # not configured (tests): as structlog does
        for row in rows:
            getattr(logger, method)(event, **row)
        return
    processors, lines, number = _pipeline
    if level < number:
        return
    context = structlog.get_context(logger._logger())
    if processors[-1] is _render_json:
        _log_each_json(lines, method, event, context, rows)
        return
    out: list[str] = []
    for row in rows:
        event_dict: Any = {**context, **row, "event": event}
        for processor in processors:
            event_dict = processor(lines, method, event_dict)
        out.append(event_dict)
    if out:
        lines.msg("\n".join(out))


def get_logger(name: str | None = None) -> Any:
    """Return a structlog logger."""
    return _Logger(name)


def _json_text(event_dict: Mapping[str, Any]) -> str:
    """A line's JSON object (not yet scrubbed)."""
    try:
        return orjson.dumps(event_dict, default=_as_json, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # what orjson refuses (an int beyond 64 bits, a tuple key) json can say
        return json.dumps(event_dict, default=_as_json, ensure_ascii=False)


def _log_each_json(
    lines: _Lines, method: str, event: str, context: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]
) -> None:
    """log_each's JSON lines, with the processors' per-line work done once for the batch.

    Each line holds what the processors would add (context variables where the row has no
    such key, the level, the time: one for lines written at once) and is scrubbed with the
    others as one text: no secret or token spans a line break (JSON escapes them inside).
    """
    extra = structlog.contextvars.get_contextvars()  # what merge_contextvars adds to a line
    level = _LEVEL_OF_METHOD.get(method, method)
    now = datetime.now(UTC)
    # What every line adds to its row, rendered once: a row whose keys it does not hold is
    # its own JSON object with this one's members after them (the same line, keys reordered).
    tail = {**extra, **context, "event": event, "level": level, "timestamp": now}
    tail_json = _json_text(tail)
    out: list[str] = []
    for row in rows:
        if not row:
            out.append(tail_json)
            continue
        if tail.keys().isdisjoint(row) and "exc_info" not in row:
            try:
                out.append(
                    orjson.dumps(row, default=_as_json, option=_ORJSON_OPTIONS).decode()[:-1]
                    + ","
                    + tail_json[1:]
                )
                continue
            except TypeError:  # rendered below, with json where orjson refuses
                pass
        # A row that sets a key the line sets too: merged as the processors merge them.
        event_dict: MutableMapping[str, Any] = {**context, **row, "event": event}
        for key, value in extra.items():
            event_dict.setdefault(key, value)
        event_dict["level"] = level
        event_dict["timestamp"] = now
        if "exc_info" in event_dict:
            event_dict = structlog.processors.format_exc_info(None, method, event_dict)
        out.append(_json_text(event_dict))
    if out:
        lines.msg(scrub("\n".join(out)))
