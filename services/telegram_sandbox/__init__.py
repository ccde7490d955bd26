"""A local stand-in for the Telegram Bot API: takes messages, shows them, injects faults and limits."""

from services.telegram_sandbox.app import RunningSandbox, build_app, serve, start_sandbox
from services.telegram_sandbox.limits import SandboxLimits

__all__ = ["RunningSandbox", "SandboxLimits", "build_app", "serve", "start_sandbox"]
