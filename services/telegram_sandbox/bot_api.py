"""The Bot API methods the sandbox answers, with its faults and flood control applied."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from services.telegram_sandbox.faults import Fault, FaultKind
from services.telegram_sandbox.limits import retry_after_seconds
from services.telegram_sandbox.markup import MAX_TEXT_UTF16, parse_html, utf16_len
from services.telegram_sandbox.state import SandboxState

TOKEN_RE = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
MAX_POLL_SECONDS = 50.0
BAD_GATEWAY_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def ok(result: Any) -> web.Response:
    """Answer a successful Bot API call."""
    return web.json_response({"ok": True, "result": result})


def error(status: int, description: str, **parameters: Any) -> web.Response:
    """Answer a failed Bot API call the way Telegram does."""
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


async def read_params(request: web.Request) -> dict[str, Any]:
    """Merge query, form (url-encoded or multipart) and JSON parameters of a Bot API call."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            params.update(body)
    elif request.can_read_body:
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


def _int_param(params: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = params.get(name)
    if value in (None, ""):
        return default
    return int(value)


async def _serve_fault(state: SandboxState, fault: Fault, chat_id: int | None) -> web.Response | None:
    state.faults_served[fault.kind.value] += 1
    state.say(f"fault {fault.kind.value} -> chat {chat_id}")
    if fault.kind is FaultKind.SLOW:
        await asyncio.sleep(fault.delay)
        return None
    if fault.kind is FaultKind.TOO_MANY_REQUESTS:
        return error(
            429,
            f"Too Many Requests: retry after {fault.retry_after}",
            retry_after=fault.retry_after,
        )
    if fault.kind is FaultKind.SERVER_ERROR:
        return error(500, "Internal Server Error")
    if fault.kind is FaultKind.BAD_GATEWAY:
        return web.Response(status=502, text=BAD_GATEWAY_PAGE, content_type="text/html")
    return error(403, "Forbidden: bot was blocked by the user")


async def send_message(state: SandboxState, params: dict[str, Any]) -> web.Response:
    """Take a message: validate it, apply faults and limits, keep it, answer a `Message`."""
    state.counts["send_requests"] += 1
    raw_chat = params.get("chat_id")
    try:
        chat_id = int(str(raw_chat))
    except ValueError:
        state.log_request("sendMessage", None, 400, "chat not found")
        return error(400, "Bad Request: chat not found")
    fault = state.faults.take("sendMessage", chat_id)
    if fault is not None:
        answer = await _serve_fault(state, fault, chat_id)
        if answer is not None:
            state.log_request("sendMessage", chat_id, answer.status, f"fault {fault.kind.value}")
            return answer
    text = str(params.get("text") or "")
    parse_mode = params.get("parse_mode") or None
    plain: str = text
    parse_error: str | None = None
    if parse_mode and str(parse_mode).upper() == "HTML":
        plain, parse_error = parse_html(text)
    if parse_error:
        state.log_request("sendMessage", chat_id, 400, "can't parse entities")
        return error(400, f"Bad Request: can't parse entities: {parse_error}")
    if not plain.strip():
        state.log_request("sendMessage", chat_id, 400, "empty")
        return error(400, "Bad Request: message text is empty")
    if utf16_len(plain) > MAX_TEXT_UTF16:
        state.log_request("sendMessage", chat_id, 400, "too long")
        return error(400, "Bad Request: message is too long")
    if state.enforce_limits:
        wait = state.flood.check(chat_id, state.clock())
        if wait is not None:
            retry_after = retry_after_seconds(wait)
            state.counts["limit_429"] += 1
            state.log_request("sendMessage", chat_id, 429, "limit")
            state.say(f"429 limit exceeded -> chat {chat_id} (retry after {retry_after}s)")
            return error(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)
    state.flood.record(chat_id, state.clock())
    message = state.store_message(chat_id, text, plain, str(parse_mode) if parse_mode else None)
    state.log_request("sendMessage", chat_id, 200)
    return ok(message)


async def get_updates(state: SandboxState, params: dict[str, Any]) -> web.Response:
    """Long-poll for incoming messages: confirm below offset, wait up to timeout for new ones."""
    offset = _int_param(params, "offset", 0) or 0
    limit = min(max(_int_param(params, "limit", 100) or 100, 1), 100)
    timeout = min(float(_int_param(params, "timeout", 0) or 0), MAX_POLL_SECONDS)
    fault = state.faults.take("getUpdates", None)
    if fault is not None:
        answer = await _serve_fault(state, fault, None)
        if answer is not None:
            return answer
    async with state.updates_changed:
        if not state.confirm_updates(offset) and timeout > 0:
            state.polls_waiting += 1
            try:
                await asyncio.wait_for(
                    state.updates_changed.wait_for(
                        lambda: state.closing or bool(state.confirm_updates(offset))
                    ),
                    timeout,
                )
            except TimeoutError:
                pass
            finally:
                state.polls_waiting -= 1
        pending = state.confirm_updates(offset)[:limit]
    state.log_request("getUpdates", None, 200)
    return ok(pending)


async def call(state: SandboxState, token: str, method: str, params: dict[str, Any]) -> web.Response:
    """Dispatch one Bot API call by method name (case-insensitive, as Telegram)."""
    if not TOKEN_RE.fullmatch(token):
        return error(401, "Unauthorized")
    name = method.lower()
    if name == "sendmessage":
        return await send_message(state, params)
    if name == "getupdates":
        return await get_updates(state, params)
    if name == "getme":
        return ok(SandboxState.bot_user(int(token.partition(":")[0])))
    if name in {"deletewebhook", "setmycommands", "deletemycommands", "close", "logout"}:
        return ok(True)
    if name == "getmycommands":
        return ok([])
    return error(404, "Not Found")
