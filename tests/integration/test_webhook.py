"""The webhook over real HTTP: the signal monitor's server on a free port, real Redis behind it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from services.signal_monitor.app import SignalMonitorService, build_app
from shared.embedded import free_port
from shared.settings import Settings, SettingsError
from shared.streams import StreamNames
from tests.support.eventually import eventually
from tests.support.pipeline import events, running

SECRET = "hook-s3cret-for-tests"
KIB = 1024


@pytest.fixture
def monitor_settings(
    redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Settings]:
    """Build the signal monitor's Settings for this test (its own prefix, port 0) plus overrides."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in list(os.environ):
        if key.startswith(("WEBHOOK_", "SIGNAL_", "WATCHLIST_", "REPLAY_", "FEED_", "BIND_")):
            monkeypatch.delenv(key)

    def build(**overrides: Any) -> Settings:
        env = {
            "REDIS_URL": redis_url,
            "INTENTFLOW_STREAM_PREFIX": prefix,
            "INTENTFLOW_DATA_DIR": str(tmp_path / "data"),
            "WEBHOOK_PORT": "0",
            **overrides,
        }
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        return Settings()

    return build


@dataclass
class Running:
    service: SignalMonitorService
    base: str


@asynccontextmanager
async def serve(service: SignalMonitorService) -> AsyncIterator[Running]:
    """Run the service and yield its base URL once the webhook listens."""
    async with running(service):
        port = await eventually(lambda: _port(service), what="webhook listening")
        yield Running(service, f"http://127.0.0.1:{port}")


async def _port(service: SignalMonitorService) -> int | None:
    return service.port


@pytest.fixture
async def hook(monitor_settings: Callable[..., Settings]) -> AsyncIterator[Running]:
    async with serve(build_app(monitor_settings(WEBHOOK_SECRET=SECRET))) as r:
        yield r


def contract(**changes: Any) -> dict[str, Any]:
    data = {
        "symbol": "BTC_USDT",
        "side": "BUY",
        "price": "43210.5",
        "strategy": "hook:test",
        "secret": SECRET,
    }
    return {k: v for k, v in {**data, **changes}.items() if v is not DROP}


def tradingview(**changes: Any) -> dict[str, Any]:
    data = {
        "ticker": "BINANCE:ETHUSDT",
        "action": "sell",
        "close": 2345.67,
        "strategy": "tv:breakout",
        "passphrase": SECRET,
        "time": "2026-11-25T12:00:00Z",
        "interval": "5",
    }
    return {k: v for k, v in {**data, **changes}.items() if v is not DROP}


DROP = object()


def raw(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def without_price(data: dict[str, Any], literal: bytes) -> bytes:
    """The body with `price` spelled as a raw JSON token (NaN, 1e999) json.dumps would not write."""
    return raw({k: v for k, v in data.items() if k != "price"})[:-1] + b', "price": ' + literal + b"}"


AHEAD = (datetime.now(UTC) + timedelta(days=1)).isoformat()
BIG = raw(contract(strategy="pad", comment="x" * (65 * KIB)))

# (id, body, status, field named in the errors, text in that field's message)
BAD: list[tuple[str, bytes, int, str, str]] = [
    ("not JSON", b"buy BTC please", 422, "body", "not valid JSON"),
    ("empty body", b"", 422, "body", "not valid JSON"),
    ("JSON array", b'[{"symbol": "BTC_USDT"}]', 422, "body", "JSON object"),
    ("JSON null", b"null", 422, "body", "JSON object"),
    ("not UTF-8", b'{"symbol": "\xff"}', 422, "body", "UTF-8"),
    ("missing symbol", raw(contract(symbol=DROP)), 422, "symbol", "required"),
    ("missing side", raw(contract(side=DROP)), 422, "side", "required"),
    ("missing price", raw(contract(price=DROP)), 422, "price", "required"),
    ("side a number", raw(contract(side=1)), 422, "side", ""),
    ("side HOLD", raw(contract(side="HOLD")), 422, "side", "BUY"),
    ("action hold", raw(tradingview(action="hold")), 422, "action", "BUY"),
    ("price 0", raw(contract(price=0)), 422, "price", "greater than 0"),
    ("price -1", raw(contract(price=-1)), 422, "price", "greater than 0"),
    ("price NaN", without_price(contract(), b"NaN"), 422, "price", "finite"),
    ("price 1e999", without_price(contract(), b"1e999"), 422, "price", "finite"),
    ("price a list", raw(contract(price=[1])), 422, "price", "decimal number"),
    ("price text", raw(contract(price="cheap")), 422, "price", "decimal number"),
    ("symbol lower-case", raw(contract(symbol="btc_usdt")), 422, "symbol", "upper-case"),
    ("symbol spaced", raw(contract(symbol="BTC USDT")), 422, "symbol", "upper-case"),
    ("symbol 200 chars", raw(contract(symbol="B" * 200)), 422, "symbol", "32"),
    ("symbol SQL", raw(contract(symbol="BTC'; DROP TABLE order_intents;--")), 422, "symbol", ""),
    ("symbol a number", raw(contract(symbol=123)), 422, "symbol", "string"),
    ("strategy HTML", raw(contract(strategy="<script>alert(1)</script>")), 422, "strategy", "1-64"),
    ("strategy SQL", raw(contract(strategy="x' OR '1'='1")), 422, "strategy", "1-64"),
    ("strategy 65 chars", raw(contract(strategy="s" * 65)), 422, "strategy", "1-64"),
    ("emitted_at a day ahead", raw(contract(emitted_at=AHEAD)), 422, "emitted_at", "future"),
    ("emitted_at naive", raw(contract(emitted_at="2026-11-25T12:00:00")), 422, "emitted_at", "timezone"),
    ("signal_id not a UUID", raw(contract(signal_id="not-a-uuid")), 422, "signal_id", "UUID"),
    ("signal_id a number", raw(contract(signal_id=12345)), 422, "signal_id", "UUID"),
    ("unknown field", raw(contract(qty="1")), 422, "qty", "unknown field"),
    ("source not webhook", raw(contract(source="strategy")), 422, "source", "webhook"),
    ("schema_version 2", raw(contract(schema_version=2)), 422, "schema_version", ""),
    ("symbol and ticker", raw(contract(ticker="BINANCE:BTCUSDT")), 422, "ticker", "not both"),
    ("duplicate key", b'{"side": "BUY", "side": "SELL"}', 422, "side", "more than once"),
    ("65 KiB body", BIG, 413, "body", "64 KiB"),
    ("missing secret", raw(contract(secret=DROP)), 401, "secret", "missing secret"),
    ("wrong secret", raw(contract(secret="guess")), 401, "secret", "wrong secret"),
    ("wrong passphrase", raw(tradingview(passphrase="guess")), 401, "secret", "wrong passphrase"),
    ("secret a number", raw(contract(secret=123)), 401, "secret", "string"),
    ("secret and passphrase", raw(contract(passphrase=SECRET)), 401, "secret", "not both"),
]


async def stream_len(redis: Redis, names: StreamNames) -> int:
    return int(await redis.xlen(names.signals))


@pytest.mark.parametrize(("body", "status", "field", "needle"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_bad_request_gets_its_4xx_naming_the_problem_and_publishes_nothing(
    hook: Running, redis: Redis, names: StreamNames, body: bytes, status: int, field: str, needle: str
) -> None:
    async with httpx.AsyncClient(base_url=hook.base) as client:
        answer = await client.post("/webhook", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == status, answer.text
        errors = answer.json()["errors"]
        named = [e for e in errors if e["field"] == field]
        assert named, errors
        assert any(needle in e["message"] for e in named), errors
        assert field in answer.json()["detail"]
        assert SECRET not in answer.text
        assert await stream_len(redis, names) == 0
        assert (await client.get("/healthz")).status_code == 200


async def test_the_table_covers_what_the_issue_lists() -> None:
    assert len(BAD) >= 25
    assert {s for _, _, s, _, _ in BAD} == {401, 413, 422}


async def test_a_body_streamed_past_64_kib_without_content_length_is_cut_off(
    hook: Running, redis: Redis, names: StreamNames
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"symbol": "BTC_USDT", "comment": "'
        for _ in range(4096):  # up to 4 MiB: the server must stop reading long before the end
            sent += 1
            yield b"x" * KIB

    async with httpx.AsyncClient(base_url=hook.base) as client:
        try:
            answer = await client.post("/webhook", content=chunks())
        except httpx.TransportError:
            answer = None  # the server may close before the client has sent everything
        if answer is not None:
            assert answer.status_code == 413, answer.text
            assert "64 KiB" in answer.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200
    assert sent < 4096
    assert await stream_len(redis, names) == 0


async def test_a_declared_content_length_past_the_limit_is_refused_before_reading(hook: Running) -> None:
    async with httpx.AsyncClient(base_url=hook.base) as client:
        answer = await client.post("/webhook", content=BIG)
        assert answer.status_code == 413
        assert answer.headers["content-length"] != "0"
        assert "64 KiB" in answer.json()["detail"]


async def test_tradingview_alert_is_accepted_and_reaches_the_stream(
    hook: Running, redis: Redis, names: StreamNames
) -> None:
    async with httpx.AsyncClient(base_url=hook.base) as client:
        # TradingView posts the alert message as text/plain unless it parses as JSON.
        answer = await client.post(
            "/webhook", content=raw(tradingview()), headers={"Content-Type": "text/plain"}
        )
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "published"
    signal_id = answer.json()["signal_id"]
    uuid.UUID(signal_id)
    [event] = await events(redis, names.signals)
    assert event["signal_id"] == signal_id
    assert (event["symbol"], event["side"], event["price"]) == ("ETH_USDT", "SELL", "2345.67")
    assert (event["strategy"], event["source"], event["schema_version"]) == ("tv:breakout", "webhook", 1)
    assert datetime.fromisoformat(event["emitted_at"]) <= datetime.now(UTC)


async def test_contract_shape_is_accepted_with_its_id_and_reaches_the_stream(
    hook: Running, redis: Redis, names: StreamNames
) -> None:
    signal_id = str(uuid.uuid4())
    emitted_at = (datetime.now(UTC) - timedelta(seconds=5)).replace(microsecond=0)
    body = contract(signal_id=signal_id, emitted_at=emitted_at.isoformat(), side="buy")
    async with httpx.AsyncClient(base_url=hook.base) as client:
        answer = await client.post("/webhook", json=body)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"signal_id": signal_id, "status": "published"}
    [event] = await events(redis, names.signals)
    assert event["signal_id"] == signal_id
    assert (event["symbol"], event["side"], event["price"], event["strategy"]) == (
        "BTC_USDT",
        "BUY",
        "43210.5",
        "hook:test",
    )
    assert datetime.fromisoformat(event["emitted_at"]) == emitted_at


async def test_the_same_signal_id_twice_publishes_once(
    hook: Running, redis: Redis, names: StreamNames
) -> None:
    signal_id = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=hook.base) as client:
        first = await client.post("/webhook", json=contract(signal_id=signal_id))
        again = await client.post("/webhook", json=contract(signal_id=signal_id, price="1"))
    assert first.status_code == again.status_code == 202
    assert first.json() == {"signal_id": signal_id, "status": "published"}
    assert again.json() == {"signal_id": signal_id, "status": "already_published"}
    assert [e["signal_id"] for e in await events(redis, names.signals)] == [signal_id]


async def test_past_the_rate_limit_the_caller_gets_429_and_nothing_is_published(
    monitor_settings: Callable[..., Settings], redis: Redis, names: StreamNames
) -> None:
    settings = monitor_settings(WEBHOOK_SECRET=SECRET, WEBHOOK_RATE_PER_MIN=3)
    async with serve(build_app(settings)) as hook, httpx.AsyncClient(base_url=hook.base) as client:
        codes = [
            (await client.post("/webhook", json=contract(price=str(100 + i)))).status_code for i in range(3)
        ]
        assert codes == [202, 202, 202]
        refused = await client.post("/webhook", json=contract(price="200"))
        assert refused.status_code == 429
        assert "3 calls per minute" in refused.json()["detail"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await client.get("/healthz")).status_code == 200
    assert await stream_len(redis, names) == 3


async def test_without_webhook_secret_every_call_is_refused(
    monitor_settings: Callable[..., Settings], redis: Redis, names: StreamNames
) -> None:
    async with serve(build_app(monitor_settings())) as hook, httpx.AsyncClient(base_url=hook.base) as client:
        answer = await client.post("/webhook", json=contract())
        assert answer.status_code == 401
        assert "WEBHOOK_SECRET" in answer.json()["detail"]
        assert (await client.get("/healthz")).json()["webhook_enabled"] is False
    assert await stream_len(redis, names) == 0


async def test_a_signal_held_by_a_gate_is_a_final_200_that_says_why(
    monitor_settings: Callable[..., Settings], redis: Redis, names: StreamNames
) -> None:
    settings = monitor_settings(WEBHOOK_SECRET=SECRET, SIGNAL_KILL_SWITCH="true")
    async with serve(build_app(settings)) as hook, httpx.AsyncClient(base_url=hook.base) as client:
        answer = await client.post("/webhook", json=contract())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["status"], body["gate"]) == ("held", "KILL_SWITCH")
    assert "kill switch" in body["reason"]
    uuid.UUID(body["signal_id"])
    assert await stream_len(redis, names) == 0


async def test_redis_unreachable_answers_503_and_not_ready_but_stays_healthy(
    monitor_settings: Callable[..., Settings],
) -> None:
    settings = monitor_settings(WEBHOOK_SECRET=SECRET, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    async with serve(build_app(settings)) as hook, httpx.AsyncClient(base_url=hook.base) as client:
        answer = await client.post("/webhook", json=contract())
        assert answer.status_code == 503
        assert "not sent" in answer.json()["detail"]
        assert answer.headers["Retry-After"]
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"]["ok"] is False
        assert (await client.get("/healthz")).status_code == 200


async def test_ready_when_redis_answers(hook: Running) -> None:
    async with httpx.AsyncClient(base_url=hook.base) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"redis": {"ok": True}}}


async def test_a_taken_port_stops_the_service_with_an_error_naming_webhook_port(
    monitor_settings: Callable[..., Settings],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = build_app(monitor_settings(WEBHOOK_SECRET=SECRET, WEBHOOK_PORT=port))
        with pytest.raises(SettingsError, match="WEBHOOK_PORT"):
            await asyncio.wait_for(service.run(asyncio.Event()), timeout=15)
