"""The orchestrator's batch handler: record intents, place orders, record decisions, hand back events."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from services.orchestrator import decide, intents, key_locks
from services.orchestrator.exchanges.base import Exchange, OrderRequest, OrderResult
from services.orchestrator.exchanges.paper import (
    BALANCE_NOT_NEGATIVE,
    FillWrite,
    PaperExchange,
    assets_of_symbols,
)
from shared.consumer import Delivery, Settlement, is_transient
from shared.events import FailureClass, IntentStatus, Side, SignalEmitted
from shared.logging import get_logger, log_each
from shared.settings import TradingMode, TradingSettings

log = get_logger("intentflow.orchestrator")


@dataclass
class OrderPipeline:
    """Turn a batch of signals into intents, orders, decisions and OrderDecided events."""

    pool: asyncpg.Pool
    exchange: Exchange | None
    trading: TradingSettings
    decisions_stream: str
    maxlen: int | None = None
    locks: key_locks.KeyLocks = field(init=False)

    def __post_init__(self) -> None:
        self.locks = key_locks.KeyLocks(self.pool)

    async def close(self) -> None:
        """Wait until every batch's key locks are released and its connection is back in the pool."""
        await self.locks.wait_released()

    async def handle(self, batch: list[Delivery[SignalEmitted]]) -> Settlement:
        """Handle one batch; return its OrderDecided events and the entries to leave pending.

        An entry stays pending while its order's outcome is unknown. The consumer publishes
        the events in the same atomic step as it acknowledges the other entries, so a crash
        in between cannot publish them twice.
        """
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
        _log_decided(decided)
        unknown = {r.signal_id for r in recorded.values() if r.status == IntentStatus.PENDING}
        for signal_id in unknown:
            log.warning("order outcome unknown; the intent stays in flight", signal_id=str(signal_id))
        return Settlement(
            self.decisions_stream,
            [r.decided_entry() for r in decided],
            keep={entry for signal_id in unknown for entry in by_signal[signal_id]},
            maxlen=self.maxlen,
        )

    def _paper(self) -> PaperExchange | None:
        if self.trading.trading_mode is TradingMode.PAPER and isinstance(self.exchange, PaperExchange):
            return self.exchange
        return None

    async def _record_intents(
        self, signals: list[SignalEmitted]
    ) -> tuple[dict[uuid.UUID, intents.IntentRow], set[uuid.UUID]]:
        """Record an intent per new signal, all in one statement; return all rows and the ones found.

        The batch's dedup keys are locked from before its read until its insert has committed
        (key_locks). Paper orders are filled by the same statement as the insert, so those
        intents are written terminal at once. A live order may reach the exchange: its intent
        is committed PENDING first and decided after the answer (_place).

        Paper fills are decided against balances read unlocked, so batches overlap rather than
        queue on the balance rows. Should another batch have spent them meanwhile, the insert
        would leave an asset below zero: the constraint refuses it, nothing of the batch is
        written, and it is decided again with the balances locked, in a transaction.
        """
        try:
            return await self._record_intents_once(signals, lock_balances=False)
        except asyncpg.CheckViolationError as exc:
            if exc.constraint_name != BALANCE_NOT_NEGATIVE:
                raise
            log.info(
                "paper balances moved under the batch; deciding it again with them locked",
                signal_ids=[str(s.signal_id) for s in signals],
            )
            return await self._record_intents_once(signals, lock_balances=True)

    async def _record_intents_once(
        self, signals: list[SignalEmitted], *, lock_balances: bool
    ) -> tuple[dict[uuid.UUID, intents.IntentRow], set[uuid.UUID]]:
        paper = self._paper()
        window = self.trading.dedup_window_seconds
        keys = sorted({decide.dedup_key(s) for s in signals})
        read = intents.BatchRead(
            [s.signal_id for s in signals],
            keys,
            min(s.emitted_at for s in signals),
            max(s.emitted_at for s in signals),
            window,
            assets_of_symbols(s.symbol for s in signals) if paper is not None else (),
        )
        if lock_balances:
            # Keys, then balances, locked in one transaction until it commits.
            async with self.pool.acquire() as conn, intents.locked_transaction(conn, keys):
                state = await intents.read_batch_state_locked(conn, read)
                return await self._decide(conn, signals, state, commit=None)
        # Keys locked for the session; the insert commits and lets them go in one round trip.
        async with self.locks.connection() as conn:
            state = await key_locks.lock_and_read(conn, read)
            return await self._decide(
                conn, signals, state, commit=functools.partial(self.locks.commit_and_release, conn)
            )

    async def _decide(
        self,
        conn: asyncpg.Connection,
        signals: list[SignalEmitted],
        state: intents.BatchState,
        *,
        commit: Callable[..., Awaitable[object]] | None,
    ) -> tuple[dict[uuid.UUID, intents.IntentRow], set[uuid.UUID]]:
        """Plan the signals not yet recorded, fill their paper orders, insert them (one statement,
        run by `commit` when given: see intents.insert_plans)."""
        paper = self._paper()
        new = [s for s in signals if s.signal_id not in state.recorded]
        if not new:
            return state.recorded, set(state.recorded)
        plans = decide.plan_signals(
            new,
            state.active,
            window_s=self.trading.dedup_window_seconds,
            mode=self.trading.trading_mode,
            brake_reason=state.brake,
        )
        outcomes: dict[uuid.UUID, intents.Outcome] = {}
        fills: FillWrite | None = None
        if paper is not None:
            requests = [self._request(p.intent_id, p.signal) for p in plans if p.decision is None]
            results, fills = paper.fill_in(requests, state.held)
            outcomes = {
                req.intent_id: _outcome(req.intent_id, res)
                for req, res in zip(requests, results, strict=True)
                if not res.unknown
            }
        inserted = await intents.insert_plans(
            conn,
            plans,
            outcomes,
            skip_recorded=paper is None,
            now=state.now,
            with_ctes=fills.ctes if fills else "",
            with_args=fills.args if fills else (),
            commit=commit,
        )
        rows = dict(state.recorded)
        rows.update({r.signal_id: r for r in inserted})
        return rows, set(state.recorded)

    def _request(self, intent_id: uuid.UUID, signal: SignalEmitted, *, resume: bool = False) -> OrderRequest:
        return OrderRequest(
            intent_id=intent_id,
            signal_id=signal.signal_id,
            symbol=signal.symbol,
            side=signal.side,
            price=signal.price,
            notional=self.trading.order_notional_usd,
            resume=resume,
        )

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
                results = [OrderResult.failed(FailureClass.UNKNOWN, f"exchange error: {exc!r}"[:500])] * len(
                    requests
                )
            outcomes = [
                _outcome(r.id, res) for r, res in zip(pending, results, strict=True) if not res.unknown
            ]
        async with self.pool.acquire() as conn, conn.transaction():
            written = await intents.record_outcomes(conn, outcomes)
            raced = {o.intent_id for o in outcomes} - {r.id for r in written}
            if raced:
                written += await intents.fetch_by_id(conn, list(raced))
        return written


def _outcome(intent_id: uuid.UUID, result: OrderResult) -> intents.Outcome:
    if result.placed and result.exchange_order_id:
        return intents.Outcome(
            intent_id,
            decide.placed(result.exchange_order_id, result.message),
            result.quantity,
            result.exchange_order_id,
            None,
        )
    failure = result.failure or FailureClass.UNKNOWN
    return intents.Outcome(
        intent_id, decide.failed(failure, result.message), result.quantity, None, result.message
    )


def _log_decided(decided: Sequence[intents.IntentRow]) -> None:
    """Log each decided intent by its ids (operators follow a signal through the logs by its id)."""
    log_each(
        log,
        "info",
        "intent decided",
        (
            {
                "signal_id": row.signal_id,  # uuids: the JSON lines write them as text
                "intent_id": row.id,
                "symbol": row.symbol,
                "status": row.status,
                "reason_code": row.reason_code,
            }
            for row in decided
        ),
    )
