"""The notifier's handlers: a message per signal, a failure message per failed order, traces."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.notifier import messages, records
from services.notifier.telegram import DeliveryStopped, MessageSender
from shared.consumer import Delivery, RetryLater, retry_outages
from shared.events import IntentStatus, OrderDecided, SignalEmitted
from shared.logging import get_logger

log = get_logger("intentflow.notifier")


@dataclass(frozen=True)
class Outgoing:
    """One signal's line in a Telegram message, and the event it announces (kept on its row)."""

    signal_id: uuid.UUID
    symbol: str
    text: str
    event: dict[str, Any] | None = None


@dataclass
class Notifier:
    """Send what the streams announce, record it, and never send a recorded message twice."""

    pool: asyncpg.Pool
    sender: MessageSender
    chat_id: str
    stop: asyncio.Event | None = None

    async def on_signals(self, batch: list[Delivery[SignalEmitted]]) -> None:
        """Send the BUY/SELL SIGNAL message of every signal not yet announced."""
        signals = {d.event.signal_id: d.event for d in batch}
        done = await records.already_recorded(self.pool, records.SIGNAL, list(signals))
        todo = [
            Outgoing(s.signal_id, s.symbol, messages.signal_text(s))
            for s in signals.values()
            if s.signal_id not in done
        ]
        await self.deliver(records.SIGNAL, todo)

    async def on_decisions(self, batch: list[Delivery[OrderDecided]]) -> None:
        """Write each decision onto its message rows; announce every failed order."""
        decisions = {d.event.signal_id: d.event for d in batch}
        async with self.pool.acquire() as conn, conn.transaction():
            await records.write_decisions(conn, list(decisions.values()))
        failed = [d for d in decisions.values() if d.status is IntentStatus.ORDER_FAILED]
        if not failed:
            return
        done = await records.already_recorded(self.pool, records.ORDER_FAILED, [d.signal_id for d in failed])
        todo = [
            Outgoing(d.signal_id, d.symbol, messages.order_failed_text(d))
            for d in failed
            if d.signal_id not in done
        ]
        await self.deliver(records.ORDER_FAILED, todo)

    async def _record_sent(self, rows: list[records.MessageRow]) -> None:
        """Record what Telegram already took; on an outage retry the record alone, never the send."""

        async def record() -> None:
            async with self.pool.acquire() as conn, conn.transaction():
                await records.record(conn, rows)

        def outage(exc: BaseException) -> None:
            log.warning(
                "recording a sent message failed; retrying the record only",
                signal_ids=[str(r.signal_id) for r in rows],
                error=type(exc).__name__,
            )

        await retry_outages(record, self.stop, on_outage=outage)

    async def deliver(self, kind: str, items: Sequence[Outgoing]) -> None:
        """Send items, several to a Telegram message when they queued up, and record each one's row."""
        texts = [item.text for item in items]
        for indices in messages.coalesce(texts):
            chunk = [items[i] for i in indices]
            try:
                result = await self.sender.send(self.chat_id, messages.chunk_text(texts, indices))
            except DeliveryStopped as exc:
                raise RetryLater(str(exc)) from None
            context: dict[str, Any] = {"coalesced": len(chunk)}
            if not result.delivered:
                context["error"] = result.permanent_error or "refused"
            rows = [
                records.MessageRow(
                    signal_id=item.signal_id,
                    kind=kind,
                    chat_id=self.chat_id,
                    message=item.text,
                    symbol=item.symbol,
                    blocked=not result.delivered,
                    telegram_message_id=result.message_id,
                    context={**context, "event": item.event},
                )
                for item in chunk
            ]
            await self._record_sent(rows)
            for item in chunk:
                if result.delivered:
                    log.info(
                        "telegram message sent",
                        signal_id=str(item.signal_id),
                        kind=kind,
                        telegram_message_id=result.message_id,
                        coalesced=len(chunk),
                    )
                else:
                    log.error(
                        "telegram message UNDELIVERED: the chat refused it",
                        signal_id=str(item.signal_id),
                        kind=kind,
                        error=result.permanent_error,
                    )
