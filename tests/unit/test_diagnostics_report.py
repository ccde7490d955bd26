"""Diagnostics' pure parts: the report assembly, violation sentences, verify's text, the gauges, the token check."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import generate_latest
from starlette.requests import Request

from services.diagnostics.invariants import Window, build_report, describe_violation
from services.diagnostics.metrics import DiagnosticsMetrics
from services.diagnostics.models import GroupHealth, StreamHealth, StreamsReport
from services.diagnostics.routes import _validation_message, bearer_ok
from services.diagnostics.verify import render

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ZERO = {
    "total_signals": 0,
    "placed": 0,
    "failed": 0,
    "dedup": 0,
    "blocked": 0,
    "in_flight": 0,
    "missing_intent": 0,
    "null_decisions": 0,
    "failed_without_telegram": 0,
}


def counts_row(**counts: int) -> dict[str, Any]:
    return {**ZERO, **counts, "generated_at": NOW, "window_start": NOW}


def violation_row(kind: str, **extra: Any) -> dict[str, Any]:
    base = {
        "type": kind,
        "signal_id": "6f1c0000-0000-4000-8000-000000000001",
        "symbol": "BTC_USDT",
        "at": NOW,
        "intent_status": None,
        "decision_type": None,
        "reason_code": None,
        "nearest_notice_s": None,
        "age_s": 301.0,
    }
    return {**base, **extra}


@pytest.mark.parametrize("kind", ["missing_intent", "null_decisions", "failed_without_telegram"])
def test_any_one_violation_fails_the_verdict(kind: str) -> None:
    rep = build_report(
        Window(), counts_row(total_signals=3, placed=3, **{kind: 1}), [], [violation_row(kind)]
    )
    assert not rep.passed and rep.summary.verdict == "FAIL" and rep.summary.violations_total == 1
    assert rep.model_dump(by_alias=True)["pass"] is False


def test_no_violation_passes_even_with_signals_in_flight() -> None:
    rep = build_report(Window(hours=12), counts_row(total_signals=2, placed=1, in_flight=1), [], [])
    assert rep.passed and rep.total == 2 and rep.hours == 12
    assert "pass" in rep.model_dump_json() and '"passed"' not in rep.model_dump_json()


def test_truncation_is_reported_when_lists_are_shorter_than_counts() -> None:
    rep = build_report(
        Window(limit=1), counts_row(total_signals=5, missing_intent=2), [], [violation_row("missing_intent")]
    )
    assert rep.summary.signals_truncated and rep.summary.violations_truncated


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (violation_row("missing_intent"), "no order intent exists for this signal_id (grace 60s)"),
        (violation_row("missing_intent", intent_status="PENDING"), "order intent still PENDING 5m01s after"),
        (violation_row("null_decisions", reason_code="X"), "decision_type is NULL"),
        (violation_row("null_decisions"), "decision_type and reason_code are NULL"),
        (
            violation_row("failed_without_telegram", reason_code="TIMEOUT", nearest_notice_s=301.0),
            "order failed (TIMEOUT) 5m01s ago without an ORDER FAILED message within ±5 minutes of the "
            "decision: the nearest ORDER FAILED message was 5m01s after the decision",
        ),
        (violation_row("failed_without_telegram", nearest_notice_s=-7260.0), "2h01m before the decision"),
        (violation_row("failed_without_telegram"), "no ORDER FAILED message was sent for this signal_id"),
    ],
)
def test_violation_details_say_what_is_wrong(row: dict[str, Any], expected: str) -> None:
    assert expected in describe_violation(row, 60)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hours", 0),
        ("hours", 721),
        ("limit", 0),
        ("limit", 5001),
        ("grace_seconds", -1),
        ("grace_seconds", 3601),
    ],
)
def test_window_refuses_out_of_range_values_by_name(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be between"):
        Window(**{field: value})


def test_validation_message_names_the_parameter() -> None:
    errors = [{"loc": ("query", "hours"), "msg": "Input should be less than or equal to 720", "input": "721"}]
    assert _validation_message(errors) == "hours: Input should be less than or equal to 720 (got '721')"


def report_json(passed: bool, violations: list[dict[str, Any]], **counts: int) -> dict[str, Any]:
    return {"pass": passed, "hours": 12, "counts": {**ZERO, **counts}, "violations": violations}


def test_render_pass_is_one_clear_line_then_counts() -> None:
    text = render(report_json(True, [], total_signals=4, placed=4), "http://d")
    lines = text.splitlines()
    assert lines[0] == "PASS: 4 signals in the last 12 h, every one decided and every failure announced"
    assert "placed 4" in lines[2] and "missing_intent 0" in lines[3]


def test_render_fail_lists_each_violation_with_id_symbol_detail() -> None:
    v = {
        "type": "missing_intent",
        "signal_id": "sid-1",
        "symbol": "ETH_USDT",
        "detail": "no intent",
        "at": "x",
    }
    text = render(report_json(False, [v], total_signals=3, missing_intent=2), "http://d")
    assert text.splitlines()[0] == "FAIL: 2 violations among 3 signals in the last 12 h"
    line = next(ln for ln in text.splitlines() if "sid-1" in ln)
    assert "missing_intent" in line and "ETH_USDT" in line and "no intent" in line
    assert "1 more not listed" in text


def samples(metrics: DiagnosticsMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_each_metrics_instance_has_its_own_registry() -> None:
    a, b = DiagnosticsMetrics(), DiagnosticsMetrics()
    a.record_report(build_report(Window(), counts_row(total_signals=1, missing_intent=1), [], []))
    b.record_report(build_report(Window(), counts_row(total_signals=1, placed=1), [], []))
    assert 'intentflow_diagnostics_violations{type="missing_intent"} 1.0' in samples(a)
    assert 'intentflow_diagnostics_violations{type="missing_intent"} 0.0' in samples(b)


def test_unknown_figures_are_cleared_not_left_stale() -> None:
    m = DiagnosticsMetrics()
    m.record_report(build_report(Window(), counts_row(null_decisions=2), [], []))
    group = GroupHealth(
        name="notifier", consumers=1, pending=2, lag=7, last_delivered_id="1-0", oldest_pending_idle_ms=1500
    )
    stream = StreamHealth(key="signals", exists=True, length=9, groups=[group])
    m.record_streams(
        StreamsReport(streams={"signals": stream}, dead_letter_length=0, undelivered_telegram_messages=0)
    )
    text = samples(m)
    assert 'intentflow_stream_group_lag{group="notifier",stream="signals"} 7.0' in text
    assert (
        'intentflow_stream_group_oldest_pending_idle_seconds{group="notifier",stream="signals"} 1.5' in text
    )
    m.record_report(None)
    m.record_streams(None)
    text = samples(m)
    assert "intentflow_diagnostics_violations{" not in text and "intentflow_stream_group_lag{" not in text
    assert "intentflow_diagnostics_pass NaN" in text


def request(path: str, headers: dict[str, str] | None = None, query: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(
        {"type": "http", "method": "GET", "path": path, "query_string": query.encode(), "headers": raw}
    )


def test_bearer_token_check() -> None:
    assert bearer_ok(request("/metrics", {"Authorization": "Bearer s3cret"}), "s3cret")
    assert bearer_ok(request("/metrics", {"Authorization": "bearer s3cret"}), "s3cret")
    assert not bearer_ok(request("/metrics", {"Authorization": "Bearer s3cre"}), "s3cret")
    assert not bearer_ok(request("/metrics", {"Authorization": "s3cret"}), "s3cret")
    assert not bearer_ok(request("/metrics"), "s3cret")
    assert not bearer_ok(request("/metrics", query="token=s3cret"), "s3cret")
    assert bearer_ok(request("/", query="token=s3cret"), "s3cret")
