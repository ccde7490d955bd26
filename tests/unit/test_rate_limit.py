"""The client-side rate limiter, on a fake clock: every schedule it makes keeps Telegram's limits."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.notifier.telegram import DeliveryStopped, RateLimiter, is_group_chat, redact
from services.telegram_sandbox.limits import FloodControl, SandboxLimits
from shared.settings import TelegramSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += max(0.0, delay)


def _limiter(clock: FakeClock, **kw) -> RateLimiter:
    return RateLimiter(clock=clock, sleep=clock.sleep, **kw)


def test_one_private_chat_gets_one_message_per_interval():
    clock = FakeClock()
    limiter = _limiter(clock)
    times = [limiter.reserve("42") - clock.now for _ in range(4)]
    assert times == [0.0, 1.0, 2.0, 3.0]


def test_different_chats_are_spaced_only_by_the_global_interval():
    clock = FakeClock()
    limiter = _limiter(clock, global_interval=0.1)
    times = [limiter.reserve(str(chat)) - clock.now for chat in range(1, 5)]
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_a_group_chat_waits_for_its_window_after_group_max_messages():
    clock = FakeClock()
    limiter = _limiter(clock, per_chat_interval=1.0, group_max=3, group_window=10.0)
    times = [limiter.reserve("-100") - clock.now for _ in range(7)]
    assert times == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 20.0]


def test_a_private_chat_has_no_group_window():
    clock = FakeClock()
    limiter = _limiter(clock, per_chat_interval=1.0, group_max=3, group_window=10.0)
    assert [limiter.reserve("100") - clock.now for _ in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_penalize_holds_a_chat_back_but_not_the_others():
    clock = FakeClock()
    limiter = _limiter(clock, global_interval=0.0)
    limiter.penalize("7", 5)
    assert limiter.reserve("7") - clock.now == 5.0
    assert limiter.reserve("8") - clock.now == 0.0


def test_an_idle_limiter_sends_at_once_again():
    clock = FakeClock()
    limiter = _limiter(clock, per_chat_interval=1.0, group_max=2, group_window=10.0)
    for _ in range(5):
        limiter.reserve("-5")
    clock.now += 3600
    assert limiter.reserve("-5") == clock.now


async def test_acquire_waits_on_the_injected_clock():
    clock = FakeClock()
    limiter = _limiter(clock)
    start = clock.now
    for _ in range(3):
        await limiter.acquire("42")
    assert clock.now - start == 2.0


async def test_acquire_raises_when_stopped_while_waiting_but_not_when_free():
    limiter = RateLimiter(per_chat_interval=30.0)
    stop = asyncio.Event()
    stop.set()
    await limiter.acquire("1", stop)  # free now: the message in hand goes
    with pytest.raises(DeliveryStopped, match="unacknowledged"):
        await limiter.acquire("1", stop)


def test_from_settings_reads_the_rates():
    limiter = RateLimiter.from_settings(
        TelegramSettings(TELEGRAM_PER_CHAT_PER_S=2, TELEGRAM_GROUP_PER_MIN=10, TELEGRAM_GLOBAL_PER_S=20)
    )
    assert limiter.per_chat_interval == 0.5
    assert limiter.group_max == 10
    assert limiter.group_window == 60.0
    assert limiter.global_interval == 0.05


def test_group_chats_are_negative_ids_or_channel_names():
    assert is_group_chat("-1001234") and is_group_chat("@channel")
    assert not is_group_chat("1234")


def test_redact_removes_the_token_and_token_shaped_text():
    token = "123456789:AAE-abcdefghijklmnopqrstuvwxyz012345"
    text = f"POST http://127.0.0.1/bot{token}/sendMessage and 987654:ABCDEFGHIJKLMNOPQRSTUVWX"
    out = redact(text, token)
    assert token not in out and "987654:ABCDEFGHIJKLMNOPQRSTUVWX" not in out
    assert "/bot***/sendMessage" in out


CHATS = ["1", "2", "3", "4", "5", "-10", "-20", "-30"]
chats = st.sampled_from(CHATS)
steps = st.lists(st.tuples(chats, st.floats(0, 2.0)), min_size=1, max_size=150)


@settings(max_examples=100, deadline=None)
@given(steps)
@example([(chat, 0.0) for chat in CHATS] * 3)
def test_every_schedule_is_accepted_by_the_sandbox_flood_control(plan):
    """Whatever the order and timing of requests, the schedule never trips a strict sandbox."""
    clock = FakeClock()
    limiter = _limiter(clock, per_chat_interval=1.0, group_max=4, group_window=10.0, global_interval=0.25)
    scheduled: list[tuple[float, str]] = []
    for chat, advance in plan:
        clock.now += advance
        scheduled.append((limiter.reserve(chat), chat))
    strict = FloodControl(
        SandboxLimits(
            per_chat_interval=1.0,
            group_max=4,
            group_window=10.0,
            global_max=4,
            global_window=1.0,
            leniency=0.999,
        )
    )
    for at, chat in sorted(scheduled):
        assert strict.check(int(chat), at) is None, (chat, at)
        strict.record(int(chat), at)


@settings(max_examples=30, deadline=None)
@given(steps)
def test_messages_to_one_chat_keep_their_order(plan):
    clock = FakeClock()
    limiter = _limiter(clock, group_max=3, group_window=5.0)
    per_chat: dict[str, list[float]] = {}
    for chat, advance in plan:
        clock.now += advance
        per_chat.setdefault(chat, []).append(limiter.reserve(chat))
    for times in per_chat.values():
        assert times == sorted(times)


def test_the_sandbox_rule_is_lenient_by_a_tenth_at_the_edges():
    flood = FloodControl(SandboxLimits())
    flood.record(1, 100.0)
    assert flood.check(1, 100.89) is not None
    assert flood.check(1, 100.9) is None
    assert flood.check(2, 100.0) is None  # another chat is free


def test_the_sandbox_group_rule_counts_twenty_per_fifty_four_seconds():
    flood = FloodControl(SandboxLimits())
    for i in range(20):
        flood.record(-5, 100.0 + i)
    wait = flood.check(-5, 120.0)
    assert wait == pytest.approx(34.0)  # the first of the twenty leaves the window at 154
    assert flood.check(-5, 154.0) is None
    assert flood.check(5, 120.0) is None  # a private chat has no group limit


def test_the_sandbox_refusal_asks_for_whole_seconds():
    from services.telegram_sandbox.limits import retry_after_seconds

    assert [retry_after_seconds(w) for w in (0.01, 1.0, 1.2, 33.9)] == [1, 1, 2, 34]
