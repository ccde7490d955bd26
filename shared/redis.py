"""The Redis client factory: one place decides decoding, timeouts, keep-alive and reconnects."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError


def create_redis(url: str) -> Redis:
    """Return an asyncio Redis client that decodes to str (hiredis parses when installed).

    A command on a connection that died (Redis restarted) is retried a few times on a
    fresh one; callers that keep failing see the error and back off themselves. Every
    command we send is safe to repeat: consumers are idempotent and publish-once is atomic.
    """
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=20,
        socket_keepalive=True,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
    )
