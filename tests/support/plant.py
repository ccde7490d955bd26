"""Plant order_intents and telegram_messages rows at times relative to the database's clock."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.orchestrator.exchanges.base import client_order_id

MIN = 60.0
HOUR = 3600.0
DECISIONS = {
    "ORDER_PLACED": ("EXECUTED", "ORDER_PLACED"),
    "ORDER_FAILED": ("FAILED", "INSUFFICIENT_FUNDS"),
    "DEDUP_SKIPPED": ("SKIPPED", "DUPLICATE_SIGNAL"),
    "BLOCKED_LIVE_TRADING": ("SKIPPED", "ORDER_BLOCKED_LIVE_TRADING"),
    "PENDING": (None, None),
}


class Plant:
    """Insert intents and messages at times relative to one reading of the database clock."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._base: datetime | None = None

    async def at(self, ago: float) -> datetime:
        """The time `ago` seconds before the plant's base (the database's now() at first use)."""
        if self._base is None:
            self._base = await self.pool.fetchval("SELECT now()")
        assert self._base is not None
        return self._base - timedelta(seconds=ago)

    async def intent(
        self,
        *,
        status: str = "ORDER_PLACED",
        decided_ago: float | None = 10 * MIN,
        updated_ago: float | None = None,
        symbol: str = "BTC_USDT",
        side: str = "BUY",
        signal_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Insert an order intent with the decision its status implies; return its signal_id."""
        signal_id = signal_id or uuid.uuid4()
        intent_id = uuid.uuid4()
        decision_type, reason_code = DECISIONS[status]
        decided = await self.at(decided_ago) if decided_ago is not None else None
        updated = await self.at(updated_ago if updated_ago is not None else (decided_ago or 0))
        await self.pool.execute(
            "INSERT INTO order_intents (id, signal_id, idempotency_key, symbol, side, strategy, price,"
            " status, decision_type, reason_code, reason_message, emitted_at, decided_at, created_at,"
            " updated_at) VALUES ($1, $2, $3, $4, $5, 'test', 100, $6, $7, $8, 'planted', $9, $10, $9, $11)",
            intent_id,
            signal_id,
            client_order_id(intent_id),
            symbol,
            side,
            status,
            decision_type,
            reason_code,
            updated - timedelta(seconds=1),
            decided,
            updated,
        )
        return signal_id

    async def message(
        self,
        signal_id: uuid.UUID | None,
        *,
        ago: float,
        text: str | None = None,
        kind: str = "SIGNAL",
        blocked: bool = False,
        symbol: str = "BTC_USDT",
        side: str = "BUY",
        decision: tuple[str | None, str | None] = ("EXECUTED", "ORDER_PLACED"),
        context: dict[str, Any] | None = None,
    ) -> None:
        """Insert a telegram_messages row; by default a sent BUY SIGNAL with its decision trace."""
        if text is None:
            text = f"🟢 <b>{side} SIGNAL</b> {symbol} @ 100"
        await self.pool.execute(
            "INSERT INTO telegram_messages (signal_id, kind, chat_id, message, symbol, blocked,"
            " timestamp, decision_type, reason_code, reason_message, context_json)"
            " VALUES ($1, $2, '-100', $3, $4, $5, $6, $7, $8, 'planted', $9)",
            signal_id,
            kind,
            text,
            symbol,
            blocked,
            await self.at(ago),
            *decision,
            context,
        )

    async def failure_notice(
        self, signal_id: uuid.UUID, *, ago: float, blocked: bool = False, symbol: str = "BTC_USDT"
    ) -> None:
        """Insert the ORDER FAILED message of a signal."""
        await self.message(
            signal_id,
            ago=ago,
            kind="ORDER_FAILED",
            text=f"❌ <b>ORDER FAILED</b> {symbol} BUY: INSUFFICIENT_FUNDS",
            blocked=blocked,
            symbol=symbol,
            decision=(None, None),
        )

    async def signal(
        self,
        status: str = "ORDER_PLACED",
        *,
        ago: float = 10 * MIN,
        symbol: str = "BTC_USDT",
        side: str = "BUY",
    ) -> uuid.UUID:
        """Plant a signal that satisfies every invariant: intent, message with trace, failure notice."""
        signal_id = await self.intent(status=status, decided_ago=ago, symbol=symbol, side=side)
        await self.message(signal_id, ago=ago - 1, symbol=symbol, side=side, decision=DECISIONS[status])
        if status == "ORDER_FAILED":
            await self.failure_notice(signal_id, ago=ago - 2, symbol=symbol)
        return signal_id
