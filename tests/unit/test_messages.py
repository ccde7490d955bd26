"""Message texts: markers, fields, HTML escaping, and packing several into one message."""

from __future__ import annotations

import html
import re
import uuid
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from services.notifier.messages import (
    alert_text,
    brake_text,
    chunk_text,
    coalesce,
    order_failed_text,
    resolved_text,
    signal_text,
    tg_len,
    truncate,
)
from shared.events import DecisionType, IntentStatus, OrderDecided, ReasonCode, Side, SignalEmitted

TAG = re.compile(r"</?([a-z-]+)[^>]*>")


def _signal(side: Side = Side.BUY, **kw) -> SignalEmitted:
    return SignalEmitted(
        symbol=kw.pop("symbol", "BTC_USDT"),
        side=side,
        price=kw.pop("price", Decimal("43210.50")),
        strategy=kw.pop("strategy", "rsi_ema:default"),
        **kw,
    )


def _failed(message: str = "not enough USDT", **kw) -> OrderDecided:
    return OrderDecided(
        signal_id=kw.pop("signal_id", uuid.uuid4()),
        intent_id=uuid.uuid4(),
        symbol=kw.pop("symbol", "ETH_USDT"),
        side=kw.pop("side", Side.SELL),
        status=IntentStatus.ORDER_FAILED,
        decision_type=DecisionType.FAILED,
        reason_code=ReasonCode.INSUFFICIENT_FUNDS,
        reason_message=message,
    )


def _visible(text: str) -> str:
    return html.unescape(TAG.sub("", text))


def _tags_balanced(text: str) -> bool:
    stack: list[str] = []
    for match in TAG.finditer(text):
        name = match.group(1)
        if match.group(0).startswith("</"):
            if not stack or stack.pop() != name:
                return False
        else:
            stack.append(name)
    return not stack and "<" not in TAG.sub("", text)


def test_signal_text_names_side_symbol_price_strategy_and_short_id():
    event = _signal(Side.BUY)
    text = signal_text(event)
    visible = _visible(text)
    assert "BUY SIGNAL" in visible
    assert "BTC_USDT" in visible
    assert "43210.5" in visible
    assert "rsi_ema:default" in visible
    assert str(event.signal_id)[:8] in visible
    assert str(event.signal_id) not in visible
    assert "\n" not in text
    assert "SELL SIGNAL" in _visible(signal_text(_signal(Side.SELL)))


def test_order_failed_text_names_symbol_side_reason_and_message():
    event = _failed("balance 5 USDT < 100 USDT needed")
    visible = _visible(order_failed_text(event))
    assert "ORDER FAILED" in visible
    assert "ETH_USDT" in visible and "SELL" in visible
    assert "INSUFFICIENT_FUNDS" in visible
    assert "balance 5 USDT < 100 USDT needed" in visible


def test_order_failed_text_escapes_html_in_the_reason():
    text = order_failed_text(_failed("<script>alert('x')</script> & more"))
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert "&amp; more" in text
    assert _tags_balanced(text)


def test_order_failed_text_keeps_a_long_reason_short_and_on_one_line():
    text = order_failed_text(_failed("line one\nline two " + "x" * 5000))
    assert "\n" not in text
    assert tg_len(text) < 600
    assert "line one line two" in _visible(text)


def test_alert_text_lists_counts_and_at_most_ten_ids():
    ids = [str(uuid.uuid4()) for _ in range(13)]
    counts = {"missing_intent": 12, "null_decisions": 1, "failed_without_telegram": 0}
    visible = _visible(alert_text(counts, ids, hours=12))
    assert "INVARIANT VIOLATION" in visible
    assert "missing_intent: 12" in visible and "failed_without_telegram: 0" in visible
    assert all(i in visible for i in ids[:10])
    assert not any(i in visible for i in ids[10:])
    assert "+3 more" in visible


def test_alert_text_escapes_what_it_is_given():
    text = alert_text({"<b>": 1}, ["<i>x"])
    assert "&lt;b&gt;" in text and "&lt;i&gt;x" in text
    assert _tags_balanced(text)


def test_resolved_and_brake_texts():
    assert "RESOLVED" in _visible(resolved_text({"missing_intent": 0}))
    on = _visible(brake_text(True, "telegram:42 <admin>"))
    off = _visible(brake_text(False, "cli"))
    assert "BRAKE ON" in on and "telegram:42 <admin>" in on
    assert "BRAKE OFF" in off and "cli" in off
    assert "<admin>" not in brake_text(True, "<admin>")


def test_coalesce_packs_in_order_within_the_limit():
    texts = ["a" * 40] * 10
    chunks = coalesce(texts, limit=100)
    assert [i for chunk in chunks for i in chunk] == list(range(10))
    assert all(tg_len(chunk_text(texts, c, 100)) <= 100 for c in chunks)
    assert chunks == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_coalesce_counts_emoji_as_telegram_does():
    texts = ["🟢" * 30, "🟢" * 30]
    # 60 UTF-16 units each: together 121, over a limit of 100.
    assert coalesce(texts, limit=100) == [[0], [1]]


def test_an_item_too_long_alone_gets_its_own_chunk_and_is_truncated_safely():
    long = "<b>BUY SIGNAL</b> " + "&lt;x&gt; " * 1000
    texts = ["short one", long, "short two"]
    chunks = coalesce(texts, limit=200)
    assert chunks == [[0], [1], [2]]
    cut = chunk_text(texts, [1], 200)
    assert tg_len(cut) <= 200
    assert cut.startswith("BUY SIGNAL")
    assert cut.endswith("…")
    assert _tags_balanced(cut)
    assert not re.search(r"&[a-z]*$", cut[:-1])


def test_truncate_leaves_short_text_alone():
    assert truncate("<b>x</b>", 10) == "<b>x</b>"


@given(st.lists(st.text(min_size=0, max_size=300), max_size=40), st.integers(20, 500))
def test_coalesce_keeps_every_item_once_in_order_and_fits(raw, limit):
    texts = [signal_text(_signal()) if not t else t.replace("<", "&lt;") for t in raw]
    chunks = coalesce(texts, limit=limit)
    assert [i for chunk in chunks for i in chunk] == list(range(len(texts)))
    for chunk in chunks:
        assert tg_len(chunk_text(texts, chunk, limit)) <= limit
        if len(chunk) > 1:
            assert chunk_text(texts, chunk, limit) == "\n".join(texts[i] for i in chunk)
