"""Helpers for the operator-facing tests: what the sandbox got, messages from a person, metrics."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.support.sandbox import received


async def texts(sandbox_url: str, chat_id: str | None = None) -> list[str]:
    """The texts (markup stripped) the sandbox received, oldest first, optionally for one chat."""
    return [str(m.get("plain_text", "")) for m in await received(sandbox_url, chat_id)]


async def containing(sandbox_url: str, needle: str, chat_id: str | None = None) -> list[str]:
    """The received texts that contain needle."""
    return [t for t in await texts(sandbox_url, chat_id) if needle in t]


async def say(sandbox_url: str, chat_id: str | int, text: str, from_id: int | None = 7) -> dict[str, Any]:
    """Post a message from a person to the bot through the sandbox."""
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{sandbox_url}/sandbox/incoming",
            json={"chat_id": int(chat_id), "text": text, "from_id": from_id},
        )
        response.raise_for_status()
        return dict(response.json())


async def metric(base_url: str, name: str, labels: str = "") -> float | None:
    """Read one sample from a /metrics page (None while absent or unreachable)."""
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            body = (await http.get(f"{base_url}/metrics")).text
    except httpx.TransportError:
        return None
    wanted = name + (f"{{{labels}}}" if labels else "")
    for line in body.splitlines():
        match = re.fullmatch(rf"{re.escape(wanted)} (\S+)", line)
        if match:
            return float(match.group(1))
    return None
