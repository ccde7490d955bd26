"""Pure rules of the watchdog, the notices and the operator commands; the alert rule file."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from services.diagnostics.invariants import Window, build_report
from services.diagnostics.metrics import DiagnosticsMetrics
from services.diagnostics.models import RecentSignalsReport
from services.diagnostics.watchdog import (
    REPUBLISH_DECISION,
    REPUBLISH_SIGNAL,
    notice_for,
    repair_plan,
    transition,
)
from services.notifier.notices import INVARIANT_WORDS, notice_text
from services.notifier.operator import Command, parse_command
from services.notifier.status import Status, status_text
from shared.brake import BrakeState, brake_notice
from shared.events import NoticeKind, OperatorNotice

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def report(violations: list[tuple[str, str | None]] = ()) -> RecentSignalsReport:  # type: ignore[assignment]
    counts = dict.fromkeys(("total_signals", "placed", "failed", "dedup", "blocked", "in_flight"), 0) | {
        "missing_intent": 0,
        "null_decisions": 0,
        "failed_without_telegram": 0,
    }
    rows: list[dict[str, Any]] = []
    for kind, signal_id in violations:
        counts[kind] += 1
        rows.append(
            {
                "type": kind,
                "signal_id": signal_id,
                "symbol": "BTC_USDT",
                "at": datetime.now(UTC),
                "intent_status": None,
                "decision_type": None,
                "reason_code": None,
                "nearest_notice_s": None,
                "age_s": 120.0,
            }
        )
    now = datetime.now(UTC)
    return build_report(Window(hours=12), {**counts, "generated_at": now, "window_start": now}, [], rows)


def test_only_a_change_of_verdict_calls_for_a_notice() -> None:
    failing = report([("missing_intent", str(uuid.uuid4()))])
    assert transition(False, failing) is NoticeKind.INVARIANT_VIOLATION
    assert transition(True, failing) is None
    assert transition(True, report()) is NoticeKind.RESOLVED
    assert transition(False, report()) is None


def test_an_alert_names_at_most_ten_distinct_signals_and_counts_each_type() -> None:
    ids = [str(uuid.uuid4()) for _ in range(12)]
    rep = report(
        [("missing_intent", i) for i in ids] + [("null_decisions", ids[0]), ("null_decisions", None)]
    )
    notice = notice_for(NoticeKind.INVARIANT_VIOLATION, rep)
    assert notice.counts == {"missing_intent": 12, "null_decisions": 2, "failed_without_telegram": 0}
    assert notice.signal_ids == ids[:10] and notice.hours == 12
    text = notice_text(notice)
    assert "INVARIANT VIOLATION" in text and "(+2 more)" not in text  # the notice carries ten already
    assert all(i in text for i in ids[:10])


def test_each_violation_type_gets_its_repair_once_per_signal() -> None:
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    plan = repair_plan(
        report(
            [
                ("missing_intent", a),
                ("null_decisions", a),
                ("failed_without_telegram", b),
                ("null_decisions", b),
                ("null_decisions", c),
                ("missing_intent", None),
            ]
        )
    )
    assert plan[REPUBLISH_SIGNAL] == [uuid.UUID(a)]
    assert plan[REPUBLISH_DECISION] == [uuid.UUID(a), uuid.UUID(b), uuid.UUID(c)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/status", Command("status")),
        ("  /Brake@intentflow_bot  exchange down ", Command("brake", "exchange down")),
        ("/release", Command("release")),
        ("/", None),
        ("status", None),
        ("", None),
    ],
)
def test_commands_are_parsed_with_their_argument(text: str, expected: Command | None) -> None:
    assert parse_command(text) == expected


def test_no_operator_text_looks_like_a_signal_or_a_failure_message() -> None:
    notices = [
        notice_for(NoticeKind.INVARIANT_VIOLATION, report([("failed_without_telegram", str(uuid.uuid4()))])),
        notice_for(NoticeKind.RESOLVED, report()),
        brake_notice(BrakeState(True, "ops@host", datetime.now(UTC), "BUY SIGNAL storm")),
        brake_notice(BrakeState(False, "ops@host", datetime.now(UTC))),
    ]
    texts = [notice_text(n) for n in notices]
    texts.append(notice_text(OperatorNotice(kind=NoticeKind.REPLY, text="nothing changed: SELL SIGNAL")))
    texts.append(
        status_text(Status(counts={"total_signals": 3, "failed": 1}, lag={"signals/orchestrator": 2}))
    )
    for text in texts:
        assert not any(word in text for word in INVARIANT_WORDS), text
    # The operator's own words are shown, with the counted phrases lower-cased.
    assert "buy signal storm" in notice_text(notices[2])


def test_brake_announcements_say_who_when_and_why() -> None:
    at = datetime(2026, 11, 25, 3, 4, 5, tzinfo=UTC)
    on = notice_text(brake_notice(BrakeState(True, "telegram:<7>", at, "fat finger")))
    assert "BRAKE ON" in on and "telegram:&lt;7&gt;" in on and "2026-11-25 03:04:05 UTC" in on
    assert "reason: fat finger" in on
    off = notice_text(brake_notice(BrakeState(False, "bob", at)))
    assert "BRAKE OFF" in off and "bob" in off and "reason" not in off


def test_a_reply_is_its_text_and_status_says_the_verdict() -> None:
    assert notice_text(OperatorNotice(kind=NoticeKind.REPLY, text="hi", chat_id="1")) == "hi"
    failing = status_text(Status(counts={"missing_intent": 1}, lag={"signals/notifier": None}))
    assert "STATUS FAIL" in failing and "signals/notifier ?" in failing
    assert "STATUS PASS" in status_text(Status(counts={"total_signals": 5}))


def test_the_alert_rules_use_only_metrics_diagnostics_exports() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "IntentflowSignalWithoutIntent",
        "IntentflowDecisionNotRecorded",
        "IntentflowFailedOrderNotAnnounced",
        "IntentflowStreamLag",
    }
    metrics = DiagnosticsMetrics()
    metrics.record_watchdog_round(report())
    metrics.watchdog_repairs.labels(REPUBLISH_SIGNAL).inc()
    metrics.watchdog_unrepairable.labels(REPUBLISH_SIGNAL).inc()
    exported = set(re.findall(r"^# TYPE (\S+)", generate_latest(metrics.registry).decode(), re.M))
    exported |= {f"{name}_total" for name in exported}
    used = {m for r in rules for m in re.findall(r"\b(intentflow_[a-z_]+)", r["expr"])}
    assert used and used <= exported, used - exported
