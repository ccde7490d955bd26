"""A Telegram sandbox per test, and helpers to ask it what it received."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.telegram_sandbox.app import RunningSandbox, start_sandbox


def new_token() -> str:
    """A well-formed, random bot token (so a leak in logs is easy to spot)."""
    return f"{secrets.randbelow(10**9) + 10**8}:AA{secrets.token_urlsafe(26)}"


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    running = await start_sandbox(console=False)
    yield running
    await running.close()


async def received(url: str, chat_id: str | None = None) -> list[dict[str, Any]]:
    """The messages a sandbox (in-process or a separate process) has received."""
    params = {"chat_id": chat_id} if chat_id else None
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/sandbox/messages", params=params)
        response.raise_for_status()
        body = response.json()
    return list(body["messages"] if isinstance(body, dict) else body)


async def inject(url: str, kind: str, count: int = 1, **extra: Any) -> None:
    """Queue a fault at a sandbox."""
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/sandbox/faults", json={"kind": kind, "count": count, **extra})
        response.raise_for_status()


async def stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/sandbox/stats")
        response.raise_for_status()
        return dict(response.json())
