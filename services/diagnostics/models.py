"""The diagnostics API's response shapes (CONTRACT §7), as pydantic models for the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ViolationType = Literal["missing_intent", "null_decisions", "failed_without_telegram"]
VIOLATION_TYPES: tuple[ViolationType, ...] = (
    "missing_intent",
    "null_decisions",
    "failed_without_telegram",
)


class SignalItem(BaseModel):
    """One sent signal: its message row, its intent's status, its recorded decision trace."""

    signal_id: str | None
    symbol: str | None
    side: str | None = Field(description="from the order intent; without one, parsed from the message")
    sent_at: datetime = Field(description="the message row's timestamp")
    intent_status: str | None = Field(description="the order intent's status; null: no intent")
    decision_type: str | None = Field(description="the decision trace on the message row")
    reason_code: str | None
    reason_message: str | None
    failure_notified: bool | None = Field(
        description="for ORDER_FAILED intents: an ORDER FAILED message within ±5 min of the decision; else null"
    )


class Counts(BaseModel):
    """Counts over the whole window (never cut by `limit`)."""

    total_signals: int
    placed: int
    failed: int
    dedup: int
    blocked: int
    in_flight: int
    missing_intent: int
    null_decisions: int
    failed_without_telegram: int


class Violation(BaseModel):
    """One broken invariant, naming the signal."""

    type: ViolationType
    signal_id: str | None
    symbol: str | None
    detail: str
    at: datetime = Field(
        description="message time (missing_intent, null_decisions) or decision time (failed_without_telegram)"
    )


class Summary(BaseModel):
    """How the report was taken: the verdict, the window bounds, whether lists were cut."""

    verdict: Literal["PASS", "FAIL"]
    violations_total: int
    generated_at: datetime
    window_start: datetime
    grace_seconds: int
    limit: int
    signals_truncated: bool
    violations_truncated: bool


class RecentSignalsReport(BaseModel):
    """The answer of GET /api/diagnostics/recent-signals."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    signals: list[SignalItem]
    total: int = Field(description="sent signals in the window (counts.total_signals)")
    hours: int
    counts: Counts
    violations: list[Violation]
    passed: bool = Field(alias="pass", description="true exactly when the three violation counts are 0")
    summary: Summary


class GroupHealth(BaseModel):
    """One consumer group of a stream."""

    name: str
    consumers: int
    pending: int
    lag: int = Field(
        description="entries not yet delivered to the group (counted up to 10000 where Redis does not say)"
    )
    last_delivered_id: str
    oldest_pending_idle_ms: int | None = Field(
        description="idle time of the group's oldest pending entry; null: nothing pending"
    )


class StreamHealth(BaseModel):
    """One contract stream."""

    key: str
    exists: bool
    length: int
    groups: list[GroupHealth]


class StreamsReport(BaseModel):
    """The answer of GET /api/diagnostics/streams."""

    streams: dict[str, StreamHealth]
    dead_letter_length: int
    undelivered_telegram_messages: int = Field(
        description="telegram_messages rows with blocked = true (not delivered)"
    )


class Check(BaseModel):
    """One readiness check."""

    ok: bool
    detail: str


class Readiness(BaseModel):
    """The answer of GET /readyz."""

    ready: bool
    checks: dict[str, Check]
    schema_revision: str | None
    expected_revision: str
