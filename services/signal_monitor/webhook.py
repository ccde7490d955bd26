"""The webhook's HTTP surface (CONTRACT §8): `POST /webhook`, `/healthz`, `/readyz`.

`POST /webhook` answers, in this order:
- 429 when the caller's IP is past WEBHOOK_RATE_PER_MIN (with Retry-After);
- 413 when Content-Length, or the body as it is read, passes 64 KiB (the body is never
  read past the limit);
- 401 / 422 / 413 as `judge_webhook` decides (secret, JSON, fields);
- 503 when Redis is unreachable: nothing was sent, the caller should retry (Retry-After);
- 202 `{"signal_id", "status": "published"}` when sent, or `"already_published"` when
  that signal_id was sent before (nothing new is sent);
- 200 `{"signal_id", "status": "held", "gate", "reason"}` when a gate (kill switch,
  alerts disabled for the symbol, cooldown, price change) held a valid signal back: the
  call was right and is final, so it is a 2xx that no sender retries, but not a 202.

Every error answer is `{"detail": "field: message; …", "errors": [{"field", "message"}]}`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from services.signal_monitor.engine import Engine
from services.signal_monitor.gates import PublishUnavailable, Result, SignalGate
from services.signal_monitor.ratelimit import TokenBuckets
from services.signal_monitor.tradingview import MAX_BODY_BYTES, judge_webhook
from shared.events import utcnow
from shared.logging import get_logger

log = get_logger("intentflow.signal_monitor.webhook")

PUBLISH_RETRY_S = 2.0
READY_TIMEOUT_S = 2.0
REDIS_RETRY_AFTER_S = 5
FieldErrors = list[dict[str, str]]


class BodyTooLarge(Exception):
    """The body passed the limit while it was being read."""


async def read_limited(request: Request, limit: int) -> bytes:
    """Read the request body, raising BodyTooLarge as soon as it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(status: int, errors: FieldErrors, headers: dict[str, str] | None = None) -> JSONResponse:
    """Answer `status` with the errors listed and joined into one readable `detail`."""
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse({"detail": detail, "errors": errors}, status_code=status, headers=headers)


def create_webhook_app(
    gate: SignalGate,
    *,
    secret: str | None,
    rate_per_min: int,
    engine: Engine | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """Build the webhook's ASGI app over a gate (tests drive it directly or over HTTP)."""
    limiter = TokenBuckets(rate_per_min)
    app = FastAPI(
        title="intentflow signal-monitor webhook",
        description="Send trading signals (contract or TradingView alert shape); see the README.",
        version="1",
    )

    @app.post("/webhook", status_code=202)
    async def webhook(request: Request) -> JSONResponse:
        """Validate one signal and send it through the gates (see the module docstring)."""
        client = request.client.host if request.client else "unknown"
        allowed = limiter.take(client, monotonic())
        if not allowed.allowed:
            wait = max(1, math.ceil(allowed.retry_after))
            message = f"more than {rate_per_min} calls per minute from {client}; retry in {wait}s"
            log.info("webhook call refused: rate limit", client=client)
            return error_response(429, [{"field": "rate", "message": message}], {"Retry-After": str(wait)})
        too_large = [
            {"field": "body", "message": f"body is larger than the 64 KiB ({MAX_BODY_BYTES} bytes) limit"}
        ]
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            log.info("webhook call rejected", status=413, client=client, content_length=int(declared))
            return error_response(413, too_large, {"Connection": "close"})
        try:
            body = await read_limited(request, MAX_BODY_BYTES)
        except BodyTooLarge:
            log.info("webhook call rejected", status=413, client=client)
            return error_response(413, too_large, {"Connection": "close"})
        verdict = judge_webhook(body, now=utcnow(), expected_secret=secret)
        if verdict.signal is None:
            log.info("webhook call rejected", status=verdict.status, client=client, errors=verdict.errors)
            return error_response(verdict.status, verdict.errors)
        signal = verdict.signal
        try:
            outcome = await gate.submit(signal, retry_for=PUBLISH_RETRY_S)
        except (RedisError, PublishUnavailable, OSError) as exc:
            log.warning(
                "webhook signal not sent: Redis unavailable",
                signal_id=str(signal.signal_id),
                client=client,
                error=f"{type(exc).__name__}: {exc}",
            )
            message = "Redis is unreachable: the signal was not sent; retry the call"
            return error_response(
                503, [{"field": "service", "message": message}], {"Retry-After": str(REDIS_RETRY_AFTER_S)}
            )
        body_out: dict[str, Any] = {"signal_id": outcome.signal_id, "status": outcome.result.value}
        if outcome.result is Result.HELD:
            assert outcome.gate is not None
            body_out |= {"gate": outcome.gate.code.value, "reason": outcome.gate.reason}
            return JSONResponse(body_out, status_code=200)
        return JSONResponse(body_out, status_code=202)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Answer 200 while the process serves; include the engine's progress."""
        out: dict[str, Any] = {"status": "ok", "webhook_enabled": bool(secret)}
        if engine is not None:
            out["engine"] = engine.status()
        return out

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Answer 200 when Redis answers a PING, else 503 with the reason."""
        try:
            await _ping(gate)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            body = {"ready": False, "checks": {"redis": {"ok": False, "error": error}}}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"ready": True, "checks": {"redis": {"ok": True}}})

    return app


async def _ping(gate: SignalGate) -> None:
    await asyncio.wait_for(gate.redis.ping(), READY_TIMEOUT_S)
