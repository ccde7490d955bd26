"""Telegram message texts (HTML, escaped) and how to pack several into one message: pure."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal

from shared.events import OrderDecided, Side, SignalEmitted

TELEGRAM_LIMIT = 4096
MAX_REASON = 300
MAX_ALERT_IDS = 10
ELLIPSIS = "…"
_TAG_RE = re.compile(r"<[^>]*>")


def esc(value: object) -> str:
    """Escape a value for Telegram's HTML parse mode."""
    return html.escape(str(value), quote=False)


def short_id(value: object) -> str:
    """Return the first 8 characters of an id, as shown in messages."""
    return str(value)[:8]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _price(price: Decimal) -> str:
    return format(price.normalize(), "f")


def signal_text(event: SignalEmitted) -> str:
    """Build the one-line "BUY SIGNAL"/"SELL SIGNAL" message of a signal."""
    icon = "🟢" if event.side is Side.BUY else "🔴"
    return (
        f"{icon} <b>{event.side.value} SIGNAL</b> {esc(event.symbol)} @ {esc(_price(event.price))}"
        f" · {esc(event.strategy)} · <code>{esc(short_id(event.signal_id))}</code>"
    )


def order_failed_text(event: OrderDecided) -> str:
    """Build the one-line "ORDER FAILED" message: symbol, side, reason code and message."""
    reason = _one_line(event.reason_message)
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 1] + ELLIPSIS
    return (
        f"❌ <b>ORDER FAILED</b> {esc(event.symbol)} {event.side.value}"
        f" · {esc(event.reason_code.value)}: {esc(reason)}"
        f" · <code>{esc(short_id(event.signal_id))}</code>"
    )


def alert_text(counts: Mapping[str, int], signal_ids: Sequence[object], *, hours: int | None = None) -> str:
    """Build the "INVARIANT VIOLATION" alert: the counts and up to ten signal ids."""
    window = f" (last {hours} h)" if hours is not None else ""
    lines = [f"🚨 <b>INVARIANT VIOLATION</b>{window}"]
    lines.append(" · ".join(f"{esc(name)}: {int(n)}" for name, n in counts.items()))
    shown = [f"<code>{esc(s)}</code>" for s in signal_ids[:MAX_ALERT_IDS]]
    if shown:
        more = len(signal_ids) - len(shown)
        lines.append("signals: " + ", ".join(shown) + (f" (+{more} more)" if more > 0 else ""))
    return "\n".join(lines)


def resolved_text(counts: Mapping[str, int] | None = None) -> str:
    """Build the "RESOLVED" message sent when every invariant holds again."""
    text = "✅ <b>RESOLVED</b> every invariant holds again"
    if counts:
        text += "\n" + " · ".join(f"{esc(name)}: {int(n)}" for name, n in counts.items())
    return text


def brake_text(on: bool, who: str) -> str:
    """Announce the runtime brake turned on or off, and by whom."""
    if on:
        return f"🛑 <b>BRAKE ON</b> new orders are blocked (BLOCKED_LIVE_TRADING) · by {esc(who)}"
    return f"▶️ <b>BRAKE OFF</b> orders are placed again · by {esc(who)}"


def tg_len(text: str) -> int:
    """Return the length Telegram counts (UTF-16 code units); for HTML an upper bound."""
    return len(text.encode("utf-16-le")) // 2


def truncate(text: str, limit: int = TELEGRAM_LIMIT) -> str:
    """Cut an over-long HTML text safely: drop its tags, keep the escaped start, end with …."""
    if tg_len(text) <= limit:
        return text
    plain = html.unescape(_TAG_RE.sub("", text))
    out: list[str] = []
    used = tg_len(ELLIPSIS)
    for char in plain:
        piece = esc(char)
        size = tg_len(piece)
        if used + size > limit:
            break
        out.append(piece)
        used += size
    return "".join(out) + ELLIPSIS


def coalesce(texts: list[str], limit: int = TELEGRAM_LIMIT) -> list[list[int]]:
    """Group item indices, in order, into chunks whose "\\n"-joined text fits limit.

    An item too long on its own gets a chunk of its own; chunk_text truncates it.
    """
    chunks: list[list[int]] = []
    current: list[int] = []
    size = 0
    for index, text in enumerate(texts):
        length = tg_len(text)
        if current and size + 1 + length <= limit:
            current.append(index)
            size += 1 + length
            continue
        if current:
            chunks.append(current)
        current, size = [index], length
    if current:
        chunks.append(current)
    return chunks


def chunk_text(texts: Sequence[str], indices: Sequence[int], limit: int = TELEGRAM_LIMIT) -> str:
    """Join the items of one chunk, each on its own line, truncated safely to limit."""
    return truncate("\n".join(texts[i] for i in indices), limit)
