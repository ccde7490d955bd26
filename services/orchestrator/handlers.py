"""The orchestrator's batch handler: record intents, place orders, record decisions, publish."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.asyncio import Redis

from services.orchestrator import decide, intents
from services.orchestrator.exchanges.base import Exchange, OrderRequest, OrderResult
from shared.consumer import Delivery, is_transient
from shared.events import FailureClass, IntentStatus, Side, SignalEmitted
from shared.logging import get_logger
from shared.settings import TradingMode, TradingSettings
from shared.streams import encode_entry

log = get_logger("intentflow.orchestrator")


@dataclass
class OrderPipeline:
    """Turn a batch of signals into intents, orders, decisions and OrderDecided events."""

    pool: asyncpg.Pool
    redis: Redis
    exchange: Exchange | None
    trading: TradingSettings
    decisions_stream: str
    maxlen: int | None = None

    async def handle(self, batch: list[Delivery[SignalEmitted]]) -> set[str]:
        """Handle one batch; return the entry ids whose order outcome is still unknown."""
        by_signal: dict[uuid.UUID, list[str]] = {}
        signals: dict[uuid.UUID, SignalEmitted] = {}
        for d in batch:
            by_signal.setdefault(d.event.signal_id, []).append(d.entry_id)
            signals.setdefault(d.event.signal_id, d.event)

        recorded, resumed = await self._record_intents(list(signals.values()))
        pending = [r for r in recorded.values() if r.status == IntentStatus.PENDING]
        finished = await self._place(pending, signals, resumed)
        recorded.update({r.signal_id: r for r in finished})

        decided = [r for r in recorded.values() if r.status != IntentStatus.PENDING]
        await self._publish(decided)
        for row in decided:
            log.info(
                "intent decided",
                signal_id=str(row.signal_id),
                intent_id=str(row.id),
                symbol=row.symbol,
                status=row.status,
                reason_code=row.reason_code,
            )
        unknown = {r.signal_id for r in recorded.values() if r.status == IntentStatus.PENDING}
        for signal_id in unknown:
            log.warning(
                "order outcome unknown; the intent stays in flight", signal_id=str(signal_id)
            )
        return {entry for signal_id in unknown for entry in by_signal[signal_id]}

    async def _record_intents(
        self, signals: list[SignalEmitted]
    ) -> tuple[dict[uuid.UUID, intents.IntentRow], set[uuid.UUID]]:
        async with self.pool.acquire() as conn, conn.transaction():
            existing = await intents.fetch_by_signal(conn, [s.signal_id for s in signals])
            new = [s for s in signals if s.signal_id not in existing]
            if not new:
                return existing, set(existing)
            keys = sorted({decide.dedup_key(s) for s in new})
            await intents.lock_keys(conn, keys)
            window = self.trading.dedup_window_seconds
            active = await intents.active_intents(
                conn,
                keys,
                min(s.emitted_at for s in new),
                max(s.emitted_at for s in new),
                window,
            )
            brake = await intents.brake_reason(conn)
            plans = decide.plan_signals(
                new, active, window_s=window, mode=self.trading.trading_mode, brake_reason=brake
            )
            inserted = await intents.insert_plans(conn, plans)
        rows = dict(existing)
        rows.update({r.signal_id: r for r in inserted})
        return rows, set(existing)

    async def _place(
        self,
        pending: Sequence[intents.IntentRow],
        signals: dict[uuid.UUID, SignalEmitted],
        resumed: set[uuid.UUID],
    ) -> list[intents.IntentRow]:
        if not pending:
            return []
        if self.exchange is None or self.trading.trading_mode is TradingMode.OFF:
            outcomes = [
                intents.Outcome(
                    r.id, decide.blocked("TRADING_MODE=off: orders are blocked"), None, None, None
                )
                for r in pending
            ]
        else:
            requests = [
                OrderRequest(
                    intent_id=r.id,
                    signal_id=r.signal_id,
                    symbol=r.symbol,
                    side=Side(r.side),
                    price=r.price,
                    notional=self.trading.order_notional_usd,
                    resume=r.signal_id in resumed,
                )
                for r in pending
            ]
            try:
                results = await self.exchange.place_orders(requests)
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.exception("exchange raised; orders failed UNKNOWN", error=repr(exc)[:300])
                results = [
                    OrderResult.failed(FailureClass.UNKNOWN, f"exchange error: {exc!r}"[:500])
                ] * len(requests)
            outcomes = [
                _outcome(r, res) for r, res in zip(pending, results, strict=True) if not res.unknown
            ]
        async with self.pool.acquire() as conn, conn.transaction():
            written = await intents.record_outcomes(conn, outcomes)
            raced = {o.intent_id for o in outcomes} - {r.id for r in written}
            if raced:
                written += await intents.fetch_by_id(conn, list(raced))
        return written

    async def _publish(self, rows: Sequence[intents.IntentRow]) -> None:
        if not rows:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                fields: Any = encode_entry(row.decided_event())
                pipe.xadd(self.decisions_stream, fields, maxlen=self.maxlen, approximate=True)
            await pipe.execute()


def _outcome(row: intents.IntentRow, result: OrderResult) -> intents.Outcome:
    if result.placed and result.exchange_order_id:
        return intents.Outcome(
            row.id,
            decide.placed(result.exchange_order_id, result.message),
            result.quantity,
            result.exchange_order_id,
            None,
        )
    failure = result.failure or FailureClass.UNKNOWN
    return intents.Outcome(
        row.id, decide.failed(failure, result.message), result.quantity, None, result.message
    )
