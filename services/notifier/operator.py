"""Telegram commands from the operator's chat: /status, /brake [reason], /release, /help.

One notifier replica polls getUpdates (Telegram allows one poller per bot): it holds a
Redis lease (SET NX PX, renewed) and stops polling the moment it loses it. Only messages
from TELEGRAM_CHAT_ID are obeyed; others are ignored and logged with their chat id. Each
update is handled once (a Redis mark per update_id), so a poller taking over, which sees
the unconfirmed last batch again, does not repeat a command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import httpx
from redis.asyncio import Redis

from services.notifier import status as status_mod
from services.notifier.messages import esc
from services.notifier.notices import NoticeDesk
from services.notifier.telegram import IncomingMessage
from shared import brake
from shared.events import NoticeKind, OperatorNotice
from shared.logging import get_logger
from shared.streams import StreamNames

log = get_logger("intentflow.notifier.operator")

LEASE_MS = 15_000
UPDATE_SEEN_TTL_S = 7 * 24 * 3600
MAX_REASON = 300
HELP_TEXT = (
    "<b>intentflow</b> commands\n"
    "/status · the verdict and counts of the last 12 h, stream lag, the brake\n"
    "/brake [reason] · hold every new order back (BLOCKED_LIVE_TRADING)\n"
    "/release · place orders again\n"
    "/help · this list"
)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Command:
    """A parsed command: its name (lower case, without / and @bot) and the rest of the line."""

    name: str
    arg: str = ""


def parse_command(text: str) -> Command | None:
    """Parse `/name[@bot] [arg]`; None when the text is not a command."""
    text = text.strip()
    if not text.startswith("/"):
        return None
    head, _, rest = text.partition(" ")
    name = head[1:].split("@", 1)[0].lower()
    return Command(name, rest.strip()) if name else None


class UpdateSource(Protocol):
    """Something that long-polls incoming messages (AiogramSender is the real one)."""

    def iter_updates(self, stop: asyncio.Event, *, poll_seconds: int = 25) -> AsyncIterator[IncomingMessage]:
        """Yield incoming messages until stop is set."""
        ...


def lease_key(prefix: str) -> str:
    """The Redis key of the getUpdates lease."""
    return f"{prefix}intentflow:telegram-poller"


@dataclass
class OperatorBot:
    """Obey the operator's chat; hold the polling lease while doing so."""

    pool: asyncpg.Pool
    redis: Redis
    names: StreamNames
    source: UpdateSource
    desk: NoticeDesk
    chat_id: str
    name: str
    diagnostics_url: str | None = None
    diagnostics_token: str | None = None
    lease_ms: int = LEASE_MS
    poll_seconds: int = 25
    maxlen: int | None = None
    polling: bool = field(default=False, init=False)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll for commands whenever this replica holds the lease, until stop is set."""
        key = lease_key(self.names.prefix)
        while not stop.is_set():
            try:
                acquired = await self.redis.set(key, self.name, nx=True, px=self.lease_ms)
            except Exception as exc:  # Redis down: no lease, no polling; try again shortly
                log.warning("telegram poller lease unavailable", error=f"{type(exc).__name__}: {exc}")
                acquired = False
            if acquired:
                await self._poll_while_leased(key, stop)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.lease_ms / 3000)

    async def _poll_while_leased(self, key: str, stop: asyncio.Event) -> None:
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew(key, stop, lost))
        self.polling = True
        log.info("polling telegram for operator commands", consumer=self.name, chat_id=self.chat_id)
        try:
            async for message in self.source.iter_updates(lost, poll_seconds=self.poll_seconds):
                try:
                    await self.handle(message)
                except Exception as exc:
                    log.error(
                        "operator command failed",
                        text=message.text[:100],
                        error=f"{type(exc).__name__}: {exc}",
                    )
        finally:
            self.polling = False
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewer
            with contextlib.suppress(Exception):
                await self.redis.eval(_RELEASE, 1, key, self.name)

    async def _renew(self, key: str, stop: asyncio.Event, lost: asyncio.Event) -> None:
        """Renew the lease every third of its life; set lost when stopping or when it slipped away."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.lease_ms / 3000)
                if stop.is_set():
                    break
                try:
                    held = await self.redis.eval(_RENEW, 1, key, self.name, str(self.lease_ms))
                except Exception as exc:
                    log.warning("telegram poller lease not renewed", error=f"{type(exc).__name__}: {exc}")
                    held = 0
                if not held:
                    log.warning("telegram poller lease lost; another notifier polls now", consumer=self.name)
                    break
        finally:
            lost.set()

    async def handle(self, message: IncomingMessage) -> None:
        """Obey one incoming message if it comes from the configured chat and was not handled before."""
        if message.chat_id != self.chat_id:
            log.warning(
                "ignored a message from a chat that is not TELEGRAM_CHAT_ID",
                chat_id=message.chat_id,
                from_id=message.from_id,
                text=message.text[:100],
            )
            return
        command = parse_command(message.text)
        if command is None:
            return
        mark = f"{self.names.prefix}intentflow:telegram-update:{message.update_id}:{message.chat_id}"
        if not await self.redis.set(mark, "1", nx=True, ex=UPDATE_SEEN_TTL_S):
            log.info("operator command already handled", update_id=message.update_id)
            return
        who = f"telegram:{message.from_id if message.from_id is not None else message.chat_id}"
        log.info("operator command", command=command.name, by=who)
        if command.name == "status":
            await self.reply(message.chat_id, await self.status_text())
        elif command.name in ("brake", "release"):
            await self.switch(command.name == "brake", who, command.arg[:MAX_REASON] or None, message.chat_id)
        else:
            await self.reply(message.chat_id, HELP_TEXT)

    async def switch(self, on: bool, who: str, reason: str | None, chat_id: str) -> None:
        """Switch the brake as `intentflow brake` does; announce a change, say so when there was none."""
        change = await brake.set_brake(self.pool, on, by=who, reason=reason)
        if change.changed:
            await brake.announce(self.redis, self.names.notices, change.state, maxlen=self.maxlen)
            return
        await self.reply(chat_id, f"nothing changed: the brake is {esc(change.state.describe())}")

    async def status_text(self) -> str:
        """Gather the figures for /status and render them."""
        source = "database"
        counts: dict[str, Any] | None = None
        if self.diagnostics_url:
            try:
                counts = await status_mod.counts_from_diagnostics(
                    self.diagnostics_url, self.diagnostics_token
                )
                source = f"diagnostics {self.diagnostics_url}"
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                log.warning("diagnostics unreachable for /status; counting in the database", error=str(exc))
        if counts is None:
            counts = await status_mod.counts_from_database(self.pool)
        try:
            lag = await status_mod.stream_lag(self.redis, self.names)
        except Exception as exc:
            log.warning("stream lag unavailable for /status", error=f"{type(exc).__name__}: {exc}")
            lag = {}
        state = await brake.brake_state(self.pool)
        return status_mod.status_text(status_mod.Status(counts=counts, lag=lag, brake=state, source=source))

    async def reply(self, chat_id: str, text: str) -> None:
        """Send a reply to the chat, recorded like every other notice."""
        await self.desk.deliver(OperatorNotice(kind=NoticeKind.REPLY, text=text, chat_id=chat_id))
