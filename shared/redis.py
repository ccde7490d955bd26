"""The Redis client factory: one place decides decoding, timeouts and keep-alive."""

from __future__ import annotations

from redis.asyncio import Redis


def create_redis(url: str) -> Redis:
    """Return an asyncio Redis client that decodes to str (hiredis parses when installed)."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=20,
        socket_keepalive=True,
        health_check_interval=15,
        retry_on_timeout=False,
    )
