"""The sandbox's HTTP face: the Bot API under /bot<token>/, operator endpoints under /sandbox/."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.telegram_sandbox import bot_api
from services.telegram_sandbox.faults import parse_fault
from services.telegram_sandbox.limits import SandboxLimits
from services.telegram_sandbox.state import SandboxState

STATE: web.AppKey[SandboxState] = web.AppKey("sandbox_state", SandboxState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _no_leaks(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Unexpected errors are answered here so aiohttp never logs a request path (with the token).
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (json.JSONDecodeError, ValueError) as exc:
        return bot_api.error(400, f"Bad Request: {type(exc).__name__}: {exc}")
    except Exception as exc:
        return bot_api.error(500, f"Internal Server Error: {type(exc).__name__}")


def _state(request: web.Request) -> SandboxState:
    return request.app[STATE]


def _chat_filter(request: web.Request) -> int | None:
    raw = request.query.get("chat_id")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text="chat_id must be an integer") from None


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


async def bot_method(request: web.Request) -> web.StreamResponse:
    """Answer a Bot API call posted by aiogram (form-encoded or multipart) or any client."""
    params = await bot_api.read_params(request)
    return await bot_api.call(
        _state(request), request.match_info["token"], request.match_info["method"], params
    )


async def list_messages(request: web.Request) -> web.StreamResponse:
    """List the messages the bot sent, oldest first, optionally for one chat_id."""
    chat_id = _chat_filter(request)
    messages = _state(request).messages
    if chat_id is not None:
        messages = [m for m in messages if m["chat_id"] == chat_id]
    return web.json_response(messages)


async def clear_messages(request: web.Request) -> web.StreamResponse:
    """Forget the messages received so far."""
    _state(request).messages.clear()
    return web.json_response({"ok": True})


async def list_requests(request: web.Request) -> web.StreamResponse:
    """List the Bot API calls and the status each got, optionally for one chat_id."""
    chat_id = _chat_filter(request)
    calls = list(_state(request).requests)
    if chat_id is not None:
        calls = [c for c in calls if c["chat_id"] == chat_id]
    return web.json_response(calls)


async def add_fault(request: web.Request) -> web.StreamResponse:
    """Queue a fault, e.g. {"kind": "429", "count": 5, "retry_after": 1, "chat_id": 42}."""
    try:
        fault = parse_fault(await _json_body(request))
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    state = _state(request)
    state.faults.add(fault)
    state.say(
        f"queued fault {fault.kind.value} x{fault.count}"
        + (f" for chat {fault.chat_id}" if fault.chat_id else "")
    )
    return web.json_response({"ok": True, "pending": state.faults.pending()})


async def list_faults(request: web.Request) -> web.StreamResponse:
    """List the faults still queued."""
    return web.json_response(_state(request).faults.pending())


async def clear_faults(request: web.Request) -> web.StreamResponse:
    """Forget every queued fault."""
    _state(request).faults.clear()
    return web.json_response({"ok": True})


async def add_incoming(request: web.Request) -> web.StreamResponse:
    """Queue a message from a person, e.g. {"chat_id": 42, "text": "/status", "from_id": 7}."""
    body = await _json_body(request)
    try:
        chat_id = int(body["chat_id"])
        text = str(body["text"])
        from_id = None if body.get("from_id") is None else int(body["from_id"])
    except (KeyError, TypeError, ValueError):
        raise web.HTTPBadRequest(
            text='give {"chat_id": <int>, "text": "...", "from_id": <int, optional>}'
        ) from None
    update = await _state(request).add_update(chat_id, text, from_id)
    return web.json_response(update)


async def get_stats(request: web.Request) -> web.StreamResponse:
    """Return the counters: received, 429s given (by limits and by faults), faults by kind."""
    return web.json_response(_state(request).stats())


async def get_limits(request: web.Request) -> web.StreamResponse:
    """Return whether limits are enforced and their values."""
    state = _state(request)
    return web.json_response({"enforce": state.enforce_limits, **dataclasses.asdict(state.limits)})


async def set_limits(request: web.Request) -> web.StreamResponse:
    """Turn enforcement on or off and optionally change the limits: {"enforce": true, "group_max": 20}."""
    body = await _json_body(request)
    state = _state(request)
    fields = {f.name for f in dataclasses.fields(SandboxLimits)}
    unknown = set(body) - fields - {"enforce"}
    if unknown:
        raise web.HTTPBadRequest(
            text=f"unknown limit fields {sorted(unknown)}; known: enforce, {sorted(fields)}"
        )
    changes = {k: v for k, v in body.items() if k in fields}
    if changes:
        try:
            state.set_limits(dataclasses.replace(state.limits, **changes))
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
    if "enforce" in body:
        state.enforce_limits = bool(body["enforce"])
    state.say(f"limits {'enforced' if state.enforce_limits else 'off'}: {state.limits}")
    return await get_limits(request)


async def reset(request: web.Request) -> web.StreamResponse:
    """Forget messages, requests, faults, counters and updates."""
    _state(request).reset()
    return web.json_response({"ok": True})


async def _release_polls(app: web.Application) -> None:
    await app[STATE].close()


def build_app(
    *,
    enforce_limits: bool = False,
    console: bool = True,
    limits: SandboxLimits | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """Build the sandbox application; state lives on the app, nothing at import."""
    app = web.Application(middlewares=[_no_leaks])
    app[STATE] = SandboxState(
        limits=limits or SandboxLimits(), enforce_limits=enforce_limits, console=console, clock=clock
    )
    app.on_shutdown.append(_release_polls)
    app.router.add_route("*", "/bot{token}/{method}", bot_method)
    app.router.add_get("/sandbox/messages", list_messages)
    app.router.add_delete("/sandbox/messages", clear_messages)
    app.router.add_get("/sandbox/requests", list_requests)
    app.router.add_post("/sandbox/faults", add_fault)
    app.router.add_get("/sandbox/faults", list_faults)
    app.router.add_delete("/sandbox/faults", clear_faults)
    app.router.add_post("/sandbox/incoming", add_incoming)
    app.router.add_get("/sandbox/stats", get_stats)
    app.router.add_get("/sandbox/limits", get_limits)
    app.router.add_post("/sandbox/limits", set_limits)
    app.router.add_post("/sandbox/reset", reset)
    return app


@dataclass
class RunningSandbox:
    """A sandbox listening on a port; `url` is what TELEGRAM_API_URL should be."""

    app: web.Application
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> SandboxState:
        return self.app[STATE]

    async def close(self) -> None:
        """Stop listening and release the port."""
        await self.runner.cleanup()


async def start_sandbox(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    enforce_limits: bool = False,
    console: bool = False,
    limits: SandboxLimits | None = None,
) -> RunningSandbox:
    """Start a sandbox on host:port (0: a free port) and return it once it listens."""
    app = build_app(enforce_limits=enforce_limits, console=console, limits=limits)
    # No access log: request paths carry the bot token.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return RunningSandbox(app, runner, host, bound)


async def serve(
    host: str,
    port: int,
    *,
    enforce_limits: bool,
    ready: asyncio.Event | None = None,
    limits: SandboxLimits | None = None,
    console: bool = True,
) -> None:
    """Run the sandbox until cancelled; set ready once it listens."""
    sandbox = await start_sandbox(host, port, enforce_limits=enforce_limits, console=console, limits=limits)
    try:
        sandbox.state.say(
            f"listening on {sandbox.url} (TELEGRAM_API_URL={sandbox.url}); "
            f"limits {'enforced' if enforce_limits else 'off'}; messages: GET {sandbox.url}/sandbox/messages"
        )
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        await sandbox.close()
