"""Send Telegram messages through aiogram: within Telegram's limits, retried until sent, token never shown."""

from __future__ import annotations

# First: aiogram is imported through it, its models built when used (see the module).
from services.notifier.aiogram_deferred import prepare

# isort: split
import asyncio
import html
import re
import time
from bisect import bisect_right, insort
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

import aiohttp
import yarl
from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import DeleteWebhook, GetMe, GetUpdates, SendMessage
from aiogram.utils.token import TokenValidationError

from shared.logging import get_logger
from shared.settings import TelegramSettings

log = get_logger(__name__)

REDACTED = "***"
_TOKEN_RE = re.compile(r"\d{3,}:[A-Za-z0-9_-]{20,}")
_TAG_RE = re.compile(r"<[^>]*>")
_EPSILON = 1e-9
STOP_GRACE_S = 3.0
T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


class TelegramError(RuntimeError):
    """A Bot API call failed; the message never contains the bot token."""


class DeliveryStopped(TelegramError):
    """The caller's stop event was set before the message was sent: do not acknowledge it."""


@dataclass(frozen=True)
class SendResult:
    """What became of one message: delivered with its id, or permanently refused and why."""

    message_id: int | None
    delivered: bool
    permanent_error: str | None = None


class MessageSender(Protocol):
    """Something that delivers a text to a chat (AiogramSender is the real one)."""

    async def send(self, chat_id: str, text: str) -> SendResult:
        """Deliver text to chat_id, retrying transient failures; report a permanent refusal."""
        ...


def redact(text: str, token: str | None = None) -> str:
    """Remove the bot token, and anything shaped like one, from text."""
    if token:
        text = text.replace(token, REDACTED)
    return _TOKEN_RE.sub(REDACTED, text)


def check_api_url(api_url: str) -> None:
    """Refuse a TELEGRAM_API_URL aiohttp cannot call (its errors would quote the URL with the token)."""
    try:
        url = yarl.URL(api_url)
        valid = url.scheme in ("http", "https") and bool(url.host) and url.port is not None
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise TelegramError(
            "TELEGRAM_API_URL must be an http(s) URL such as https://api.telegram.org or "
            f"http://127.0.0.1:8081, not {redact(api_url)!r}"
        )


def is_group_chat(chat_id: str) -> bool:
    """Tell whether a chat id names a group or channel (negative id or @name)."""
    return chat_id.startswith(("-", "@"))


async def pause(delay: float, stop: asyncio.Event | None, sleep: Sleep = asyncio.sleep) -> None:
    """Wait delay seconds; raise DeliveryStopped as soon as stop is set (no wait: never raise)."""
    if delay <= 0:
        return
    if stop is None:
        await sleep(delay)
        return
    if stop.is_set():
        raise DeliveryStopped("stopping: the message was not sent; leave it unacknowledged")
    sleeper = asyncio.ensure_future(sleep(delay))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, stopper):
            task.cancel()
    if stop.is_set():
        raise DeliveryStopped("stopping: the message was not sent; leave it unacknowledged")


class RateLimiter:
    """Schedule sends inside Telegram's limits: per chat, per group chat, and overall.

    Each acquire reserves the earliest moment that keeps every limit: at least
    per_chat_interval after the chat's previous send, at most group_max sends per
    group_window for a group chat, and at least global_interval between any two sends.
    Reservations are made in call order, so messages to one chat keep their order.
    """

    def __init__(
        self,
        *,
        per_chat_interval: float = 1.0,
        group_max: int = 20,
        group_window: float = 60.0,
        global_interval: float = 1 / 30,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if per_chat_interval < 0 or group_window < 0 or global_interval < 0 or group_max < 1:
            raise ValueError("rate limits must be >= 0 seconds and group_max >= 1")
        self.per_chat_interval = per_chat_interval
        self.group_max = group_max
        self.group_window = group_window
        self.global_interval = global_interval
        self._clock = clock
        self._sleep = sleep
        self._last: dict[str, float] = {}
        self._not_before: dict[str, float] = {}
        self._groups: dict[str, deque[float]] = {}
        self._all: list[float] = []

    @classmethod
    def from_settings(cls, settings: TelegramSettings, **kwargs: object) -> RateLimiter:
        """Build a limiter from TELEGRAM_PER_CHAT_PER_S, TELEGRAM_GROUP_PER_MIN, TELEGRAM_GLOBAL_PER_S."""
        return cls(
            per_chat_interval=1 / settings.telegram_per_chat_per_s,
            group_max=max(1, int(settings.telegram_group_per_min)),
            group_window=60.0,
            global_interval=1 / settings.telegram_global_per_s,
            **kwargs,  # type: ignore[arg-type]
        )

    def reserve(self, chat_id: str) -> float:
        """Reserve and return the clock time at which a message to chat_id may be sent."""
        now = self._clock()
        self._prune(now)
        at = max(now, self._not_before.get(chat_id, now))
        last = self._last.get(chat_id)
        if last is not None:
            at = max(at, last + self.per_chat_interval)
        group = self._groups.get(chat_id) if is_group_chat(chat_id) else None
        if group is not None and len(group) >= self.group_max:
            at = max(at, group[-self.group_max] + self.group_window)
        at = self._free_global_slot(at)
        self._last[chat_id] = at
        if is_group_chat(chat_id):
            self._groups.setdefault(chat_id, deque()).append(at)
        insort(self._all, at)
        return at

    async def acquire(self, chat_id: str, stop: asyncio.Event | None = None) -> None:
        """Wait until a message to chat_id may be sent (DeliveryStopped if stop is set first)."""
        at = self.reserve(chat_id)
        await pause(at - self._clock(), stop, self._sleep)

    def penalize(self, chat_id: str, seconds: float) -> None:
        """Hold chat_id back for seconds, as a 429's retry_after asks."""
        until = self._clock() + seconds
        self._not_before[chat_id] = max(self._not_before.get(chat_id, until), until)

    def _free_global_slot(self, at: float) -> float:
        gap = self.global_interval
        while True:
            index = bisect_right(self._all, at - gap + _EPSILON)
            if index < len(self._all) and self._all[index] < at + gap - _EPSILON:
                at = self._all[index] + gap
                continue
            return at

    def _prune(self, now: float) -> None:
        horizon = now - max(self.group_window, self.per_chat_interval, self.global_interval) - 1.0
        cut = bisect_right(self._all, horizon)
        if cut:
            del self._all[:cut]
        for chat_id, times in list(self._groups.items()):
            while times and times[0] < horizon:
                times.popleft()
            if not times:
                del self._groups[chat_id]
        for mapping in (self._last, self._not_before):
            for chat_id in [c for c, t in mapping.items() if t < horizon]:
                del mapping[chat_id]


@dataclass(frozen=True)
class IncomingMessage:
    """A text message a person sent to the bot."""

    update_id: int
    chat_id: str
    from_id: int | None
    text: str
    date: datetime


@dataclass(frozen=True)
class UpdateBatch:
    """What one getUpdates call returned; pass next_offset to the next call to confirm them."""

    messages: list[IncomingMessage]
    next_offset: int | None


_PERMANENT = (TelegramForbiddenError, TelegramBadRequest, TelegramMigrateToChat, TelegramEntityTooLarge)
_TRANSIENT = (
    TelegramServerError,
    TelegramNetworkError,
    TelegramAPIError,
    ClientDecodeError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
)


class AiogramSender:
    """Deliver messages through aiogram's Bot, paced by a RateLimiter, retried until sent."""

    def __init__(
        self,
        token: str,
        *,
        api_url: str = "https://api.telegram.org",
        limiter: RateLimiter | None = None,
        stop: asyncio.Event | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        request_timeout: int = 20,
    ) -> None:
        self._token = token
        check_api_url(api_url)
        try:
            self._bot = Bot(
                token,
                session=AiohttpSession(api=TelegramAPIServer.from_base(api_url)),
                default=DefaultBotProperties(parse_mode="HTML"),
            )
        except TokenValidationError:
            raise TelegramError(
                "TELEGRAM_BOT_TOKEN is not a bot token: it must look like 123456:ABC-DEF… "
                "(digits, a colon, then letters)"
            ) from None
        # Build the models of the four methods used now, not while the first messages wait.
        self._models = prepare(SendMessage, GetMe, GetUpdates, DeleteWebhook)
        self.limiter = limiter or RateLimiter()
        self.stop = stop
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._timeout = request_timeout

    @classmethod
    def from_settings(
        cls, settings: TelegramSettings, *, stop: asyncio.Event | None = None, **kwargs: object
    ) -> AiogramSender:
        """Build a sender from TELEGRAM_BOT_TOKEN, TELEGRAM_API_URL and the TELEGRAM_*_PER_* limits."""
        token, _ = settings.require()
        return cls(
            token,
            api_url=settings.telegram_api_url,
            limiter=RateLimiter.from_settings(settings),
            stop=stop,
            **kwargs,  # type: ignore[arg-type]
        )

    def describe(self, exc: BaseException) -> str:
        """Describe an error in one line, without the token."""
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return redact(text if len(text) <= 500 else text[:499] + "…", self._token)

    def backoff(self, attempt: int) -> float:
        """Return the wait before retry number attempt (1, 2, …): doubling, capped."""
        return min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))

    async def send(self, chat_id: str, text: str) -> SendResult:
        """Deliver text (HTML) to chat_id; retry until sent, stop is set, or Telegram refuses for good."""
        target: int | str = int(chat_id) if _looks_numeric(chat_id) else chat_id
        parse_mode: str | None = "HTML"
        failures = 0
        while True:
            await self.limiter.acquire(chat_id, self.stop)
            try:
                message = await self._unless_stopped(
                    self._bot.send_message(
                        chat_id=target, text=text, parse_mode=parse_mode, request_timeout=self._timeout
                    )
                )
                return SendResult(message.message_id, True, None)
            except TelegramRetryAfter as exc:
                self.limiter.penalize(chat_id, exc.retry_after)
                log.warning(
                    "telegram asked to wait (429); retrying after retry_after",
                    chat_id=chat_id,
                    retry_after=exc.retry_after,
                )
            except _PERMANENT as exc:
                if parse_mode and "can't parse entities" in str(exc):
                    # Our markup was refused: deliver the words as plain text rather than nothing.
                    log.error(
                        "telegram refused the HTML markup; sending the text as plain text",
                        chat_id=chat_id,
                        error=self.describe(exc),
                    )
                    parse_mode, text = None, html.unescape(_TAG_RE.sub("", text))
                    continue
                reason = self.describe(exc)
                log.error(
                    "telegram refused the message for good; not retrying", chat_id=chat_id, error=reason
                )
                return SendResult(None, False, reason)
            except _TRANSIENT as exc:
                failures += 1
                delay = self.backoff(failures)
                level = (
                    log.error
                    if isinstance(exc, TelegramUnauthorizedError | TelegramNotFound)
                    else log.warning
                )
                level(
                    "telegram send failed; retrying",
                    chat_id=chat_id,
                    attempt=failures,
                    retry_in=delay,
                    error=self.describe(exc),
                )
                await pause(delay, self.stop)
            except DeliveryStopped:
                raise
            except Exception as exc:
                raise TelegramError(f"sending to chat {chat_id} failed: {self.describe(exc)}") from None

    async def _unless_stopped(self, call: Awaitable[T]) -> T:
        """Await a Bot API call; once stop is set, give it STOP_GRACE_S more, then abandon it.

        A hanging request must not hold a SIGTERM past the contract's 10 s. An abandoned
        message is not recorded, so its entry stays unacknowledged and is sent again later
        (at-least-once: Telegram may have shown it already).
        """
        task = asyncio.ensure_future(call)
        if self.stop is None:
            return await task
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=STOP_GRACE_S)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            raise DeliveryStopped("stopping: a Telegram call was still running; leave it unacknowledged")
        return task.result()

    async def check(self) -> str:
        """Ask getMe; return the bot's username or raise TelegramError saying what to fix."""
        try:
            me = await self._bot.get_me(request_timeout=self._timeout)
        except TelegramUnauthorizedError:
            raise TelegramError("the Bot API refused TELEGRAM_BOT_TOKEN (401 Unauthorized)") from None
        except Exception as exc:
            raise TelegramError(
                f"cannot reach the Bot API at TELEGRAM_API_URL: {self.describe(exc)}"
            ) from None
        return me.username or str(me.id)

    async def get_updates(
        self, offset: int | None = None, *, poll_seconds: int = 25, limit: int = 100
    ) -> UpdateBatch:
        """Long-poll getUpdates once; raise TelegramError (token-free) when it fails."""
        try:
            updates = await self._bot.get_updates(
                offset=offset,
                timeout=poll_seconds,
                limit=limit,
                allowed_updates=["message"],
                request_timeout=poll_seconds + self._timeout,
            )
        except Exception as exc:
            raise TelegramError(f"getUpdates failed: {self.describe(exc)}") from None
        messages = [
            IncomingMessage(
                update_id=u.update_id,
                chat_id=str(u.message.chat.id),
                from_id=u.message.from_user.id if u.message.from_user else None,
                text=u.message.text,
                date=u.message.date,
            )
            for u in updates
            if u.message is not None and u.message.text is not None
        ]
        next_offset = max((u.update_id for u in updates), default=None)
        return UpdateBatch(messages, None if next_offset is None else next_offset + 1)

    async def iter_updates(
        self, stop: asyncio.Event, *, poll_seconds: int = 25
    ) -> AsyncIterator[IncomingMessage]:
        """Yield incoming messages until stop is set, confirming each batch and retrying failures."""
        offset: int | None = None
        failures = 0
        try:
            await self._bot.delete_webhook(request_timeout=self._timeout)
        except Exception as exc:
            log.warning("telegram deleteWebhook failed; polling anyway", error=self.describe(exc))
        while not stop.is_set():
            poll = asyncio.ensure_future(self.get_updates(offset, poll_seconds=poll_seconds))
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({poll, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not poll.done():
                poll.cancel()
                return
            try:
                batch = poll.result()
            except TelegramError as exc:
                failures += 1
                log.warning("telegram getUpdates failed; retrying", attempt=failures, error=str(exc))
                try:
                    await pause(self.backoff(failures), stop)
                except DeliveryStopped:
                    return
                continue
            failures = 0
            if batch.next_offset is not None:
                offset = batch.next_offset
            for message in batch.messages:
                yield message

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._bot.session.close()

    async def __aenter__(self) -> AiogramSender:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


def _looks_numeric(chat_id: str) -> bool:
    return chat_id.lstrip("-").isdigit()
