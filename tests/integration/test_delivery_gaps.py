"""Delivery gaps the chaos suite found: a send is never repeated for a failed record; shutdown releases."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from services.notifier.handlers import Notifier
from services.notifier.telegram import SendResult
from shared.consumer import StreamConsumer
from shared.events import SignalEmitted
from shared.settings import ConsumerSettings
from shared.streams import GROUP_NOTIFIER, StreamNames
from tests.support.eventually import eventually
from tests.support.pipeline import signal, xadd


class CountingSender:
    """A Telegram that always takes the message; counts what it took per text."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, chat_id: str, text: str) -> SendResult:
        self.sent.append(text)
        return SendResult(len(self.sent), True, None)


class FlakyPool:
    """The real pool, except that PostgreSQL is unreachable for the first acquire after a send."""

    def __init__(self, pool: asyncpg.Pool, sender: CountingSender) -> None:
        self._pool, self._sender, self._broken_after = pool, sender, 1

    def acquire(self) -> Any:
        if len(self._sender.sent) == self._broken_after:
            self._broken_after = -1
            raise ConnectionRefusedError(111, "PostgreSQL is down (simulated)")
        return self._pool.acquire()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


async def test_postgres_down_between_send_and_record_does_not_send_twice(
    redis, names: StreamNames, pool: asyncpg.Pool
) -> None:
    sender = CountingSender()
    notifier = Notifier(pool=FlakyPool(pool, sender), sender=sender, chat_id="4242")
    consumer = StreamConsumer(
        redis,
        stream=names.signals,
        group=GROUP_NOTIFIER,
        model=SignalEmitted,
        handler=notifier.on_signals,
        dead_letter=names.dead_letter,
        settings=ConsumerSettings.model_validate({"CLAIM_IDLE_MS": 60_000, "CONSUMER_BLOCK_MS": 50}),
        name="n1",
    )
    sig = signal()
    await xadd(redis, names.signals, sig)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:

        async def recorded() -> int:
            return int(await pool.fetchval("SELECT count(*) FROM telegram_messages WHERE kind = 'SIGNAL'"))

        await eventually(recorded, until=lambda n: n == 1, timeout=30)
    finally:
        stop.set()
        await task
    assert len(sender.sent) == 1, f"the signal was sent {len(sender.sent)} times"


async def test_a_send_abandoned_at_shutdown_raises_delivery_stopped(sandbox) -> None:
    from services.notifier.telegram import AiogramSender, DeliveryStopped
    from services.telegram_sandbox.faults import Fault, FaultKind
    from tests.support.sandbox import new_token

    stop = asyncio.Event()
    sender = AiogramSender(new_token(), api_url=sandbox.url, stop=stop)
    sandbox.state.faults.add(Fault(FaultKind.SLOW, count=1, delay=8.0))
    try:
        sending = asyncio.create_task(sender.send("4242", "hello"))

        async def hanging() -> int:
            return int(sandbox.state.faults_served["slow"])

        await eventually(hanging, until=lambda n: n == 1, timeout=10)
        stop.set()
        with pytest.raises(DeliveryStopped):
            await asyncio.wait_for(sending, timeout=10)
    finally:
        await sender.close()
