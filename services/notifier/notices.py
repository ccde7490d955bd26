"""Operator notices (watchdog alerts, RESOLVED, brake switches, command replies): sent once each.

A notice is recorded in telegram_messages with its own kind (ALERT, RESOLVED, BRAKE, REPLY),
signal_id NULL and its notice_id in context_json. Sending holds a session advisory lock on the
notice_id and checks for its row first, so a redelivered notice, or one two notifiers race on,
goes out once; a unique index on the notice_id backs that up. No transaction stays open while
Telegram is asked (a send may wait out 429s and outages for minutes, and a server's
idle_in_transaction_session_timeout would end the session under it): the check and the record
are statements of their own, and once Telegram has the notice only its record is retried
through a database outage, never the send.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.notifier import messages
from services.notifier.telegram import DeliveryStopped, MessageSender, SendResult
from shared.consumer import Delivery, RetryLater, retry_outages
from shared.events import NoticeKind, OperatorNotice
from shared.logging import get_logger

log = get_logger("intentflow.notifier")

RECORD_KINDS = {
    NoticeKind.INVARIANT_VIOLATION: "ALERT",
    NoticeKind.RESOLVED: "RESOLVED",
    NoticeKind.BRAKE_ON: "BRAKE",
    NoticeKind.BRAKE_OFF: "BRAKE",
    NoticeKind.REPLY: "REPLY",
}


# A row whose text holds one of these counts as a signal or a failure notice (§7): an
# operator's words (a brake reason, a name) must not make a notice look like one.
INVARIANT_WORDS = ("BUY SIGNAL", "SELL SIGNAL", "ORDER FAILED")


def defang(text: str) -> str:
    """Lower-case the phrases the invariants look for, wherever a notice's text holds them."""
    for word in INVARIANT_WORDS:
        text = text.replace(word, word.lower())
    return text


def notice_text(notice: OperatorNotice) -> str:
    """Build the Telegram text of a notice (never holding a phrase the invariants count)."""
    return defang(_text(notice))


def _text(notice: OperatorNotice) -> str:
    if notice.kind is NoticeKind.INVARIANT_VIOLATION:
        return messages.alert_text(notice.counts, notice.signal_ids, hours=notice.hours)
    if notice.kind is NoticeKind.RESOLVED:
        return messages.resolved_text(notice.counts or None)
    if notice.kind in (NoticeKind.BRAKE_ON, NoticeKind.BRAKE_OFF):
        text = messages.brake_text(notice.kind is NoticeKind.BRAKE_ON, notice.actor or "someone")
        text += f" · {notice.at.strftime('%Y-%m-%d %H:%M:%S UTC')}"
        if notice.reason:
            text += f"\nreason: {messages.esc(notice.reason)}"
        return text
    return notice.text or ""


@dataclass
class NoticeDesk:
    """Deliver operator notices to the configured chat (or a reply's chat), each one once."""

    pool: asyncpg.Pool
    sender: MessageSender
    chat_id: str
    stop: asyncio.Event | None = None

    async def on_notices(self, batch: list[Delivery[OperatorNotice]]) -> None:
        """Send every notice of a batch not sent before, in order."""
        seen: set[str] = set()
        for delivery in batch:
            notice = delivery.event
            if str(notice.notice_id) not in seen:
                seen.add(str(notice.notice_id))
                await self.deliver(notice)

    async def deliver(self, notice: OperatorNotice) -> bool:
        """Send one notice unless its notice_id was recorded; return whether it was sent now."""
        notice_id = str(notice.notice_id)
        chat_id = notice.chat_id or self.chat_id
        text = messages.truncate(notice_text(notice))
        kind = RECORD_KINDS[notice.kind]
        async with self.pool.acquire() as conn, _notice_lock(conn, notice_id):
            if await _recorded(conn, notice_id):
                log.info("notice already sent; not sending it again", notice_id=notice_id, kind=kind)
                return False
            try:
                result = await self.sender.send(chat_id, text)
            except DeliveryStopped as exc:
                raise RetryLater(str(exc)) from None
            await self._record(notice, kind, chat_id, text, result)
        if result.delivered:
            log.info("operator notice sent", notice_id=notice_id, kind=kind, chat_id=chat_id)
        else:
            log.error(
                "operator notice UNDELIVERED", notice_id=notice_id, kind=kind, error=result.permanent_error
            )
        return True

    async def _record(
        self, notice: OperatorNotice, kind: str, chat_id: str, text: str, result: SendResult
    ) -> None:
        """Record what Telegram was asked; through a database outage retry the record alone."""
        notice_id = str(notice.notice_id)
        context: dict[str, Any] = {"notice_id": notice_id, "notice": notice.model_dump(mode="json")}
        if not result.delivered:
            context["error"] = result.permanent_error or "refused"

        async def insert() -> None:
            await self.pool.execute(
                "INSERT INTO telegram_messages (signal_id, kind, chat_id, message, blocked,"
                " telegram_message_id, context_json) VALUES (NULL, $1, $2, $3, $4, $5, $6)",
                kind,
                chat_id,
                text,
                not result.delivered,
                result.message_id,
                context,
            )

        def outage(exc: BaseException) -> None:
            log.warning(
                "recording a sent notice failed; retrying the record only",
                notice_id=notice_id,
                error=type(exc).__name__,
            )

        await retry_outages(insert, self.stop, on_outage=outage)


@contextlib.asynccontextmanager
async def _notice_lock(conn: asyncpg.Connection, notice_id: str) -> AsyncIterator[None]:
    """Hold the notice's session advisory lock on conn, outside any transaction.

    The pool hands connections back as they are (shared/db.py), so the lock is let go here; a
    session that could not let it go is closed, and the lock goes with it.
    """
    await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 3))", notice_id)
    try:
        yield
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 3))", notice_id)
        except Exception as exc:
            # The session ended (its lock with it) or cannot be trusted to have let go: close it.
            _close(conn)
            log.warning(
                "letting a notice's lock go failed; its session is closed",
                notice_id=notice_id,
                error=type(exc).__name__,
            )
        except BaseException:
            _close(conn)
            raise


def _close(conn: asyncpg.Connection) -> None:
    """Close a session at once; one the pool already took back (it saw the session end) is gone."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


async def _recorded(conn: asyncpg.Connection, notice_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM telegram_messages"
            " WHERE context_json ? 'notice_id' AND context_json ->> 'notice_id' = $1)",
            notice_id,
        )
    )
