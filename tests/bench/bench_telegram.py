"""Measure a Telegram burst: signals to one group chat through a notifier process and the sandbox.

The signals enter as a user's do: through the signal monitor's webhook (`POST /webhook`, the
contract's shape with each signal's own `signal_id`), or, without a webhook, XADDed at once.

The sandbox process enforces Telegram's limits (1 message/s per chat, 20/min per group
chat, 30/s overall) and answers 429 past them; the figure is how long until every
signal's line (and every failed order's line) has been delivered, and how many 429s
the sandbox gave on the way.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import httpx
from redis.asyncio import Redis

from shared.streams import StreamNames
from tests.bench.load import entry_signal_id, progress, publish_burst, signal_entry

UNHELD = "ZZZ_USDT"
"""A symbol whose base the paper account never holds: its SELL fails INSUFFICIENT_FUNDS."""


def burst_entries(count: int, failing_every: int = 5) -> list[dict[str, str]]:
    """Signals of a burst: mostly BUYs that fill, every `failing_every`th a SELL that fails."""
    return [
        signal_entry(i, "burst", side="SELL", symbol=UNHELD)
        if i % failing_every == failing_every - 1
        else signal_entry(i, "burst")
        for i in range(count)
    ]


WEBHOOK_CALLS_AT_ONCE = 10


def webhook_body(entry: dict[str, str], secret: str) -> dict[str, str]:
    """The `POST /webhook` body of a signal entry (signal_entry's): the contract's fields, its own
    signal_id, so that the signal published is the one the burst counts."""
    event = json.loads(entry["event"])
    fields = ("signal_id", "symbol", "side", "price", "strategy")
    return {**{k: str(event[k]) for k in fields}, "secret": secret}


async def post_to_webhook(webhook_url: str, secret: str, entries: Sequence[dict[str, str]]) -> None:
    """POST every entry to the webhook, WEBHOOK_CALLS_AT_ONCE at a time; each must answer 202
    `published` (a signal held back or refused would leave the burst waiting for its line)."""
    calls = asyncio.Semaphore(WEBHOOK_CALLS_AT_ONCE)
    async with httpx.AsyncClient(timeout=30) as http:

        async def post(entry: dict[str, str]) -> None:
            async with calls:
                answer = await http.post(webhook_url, json=webhook_body(entry, secret))
            if answer.status_code != 202 or answer.json().get("status") != "published":
                raise RuntimeError(f"the webhook answered {answer.status_code}: {answer.text[:300]}")

        await asyncio.gather(*(post(e) for e in entries))


def lines_delivered(messages: list[dict[str, Any]], short_ids: set[str]) -> tuple[set[str], set[str], int]:
    """Return (signals whose SIGNAL line arrived, signals whose ORDER FAILED line arrived, messages)."""
    signal_lines: set[str] = set()
    failure_lines: set[str] = set()
    used = 0
    for message in messages:
        hit = False
        for line in str(message.get("text", "")).splitlines():
            short = next((s for s in short_ids if s in line), None)
            if short is None:
                continue
            hit = True
            if "ORDER FAILED" in line:
                failure_lines.add(short)
            elif "SIGNAL" in line:
                signal_lines.add(short)
        used += hit
    return signal_lines, failure_lines, used


async def burst(
    redis: Redis,
    names: StreamNames,
    sandbox_url: str,
    *,
    count: int = 200,
    timeout: float = 300,
    webhook: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Publish `count` signals at once, through `webhook` (its URL and secret) when given; poll
    the sandbox until each one's lines have arrived. The clock starts before the first is sent."""
    entries = burst_entries(count)
    short_ids = {entry_signal_id(e)[:8] for e in entries}
    failing = {entry_signal_id(e)[:8] for e in entries if UNHELD in e["event"]}
    async with httpx.AsyncClient(base_url=sandbox_url, timeout=10) as http:
        started = time.time()
        if webhook is None:
            await publish_burst(redis, names.signals, entries)
        else:
            await post_to_webhook(*webhook, entries)
        sent_s = time.time() - started
        deadline = time.monotonic() + timeout
        last_report = 0.0
        while True:
            messages = (await http.get("/sandbox/messages")).json()
            signals, failures, used = lines_delivered(messages, short_ids)
            if signals == short_ids and failures >= failing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"after {timeout:.0f} s only {len(signals)} of {count} signal lines and "
                    f"{len(failures)} of {len(failing)} failure lines were delivered"
                )
            if time.monotonic() - last_report > 5:
                progress(f"telegram burst: {len(signals)}/{count} signal lines delivered")
                last_report = time.monotonic()
            await asyncio.sleep(0.1)
        elapsed = time.time() - started
        stats = (await http.get("/sandbox/stats")).json()
    progress(
        f"telegram burst of {count} delivered in {elapsed:.1f} s in {used} messages, "
        f"{stats['total_429']} 429s"
    )
    return {
        "telegram_burst_s": round(elapsed, 2),
        "telegram_burst_sent_s": round(sent_s, 2),
        "telegram_burst_via": "webhook" if webhook else "redis",
        "telegram_429": int(stats["total_429"]),
        "telegram_messages": used,
        "telegram_failure_lines": len(failing),
    }
