"""Serving an ASGI app with uvicorn until a stop event, as the HTTP services do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn

GRACEFUL_SHUTDOWN_S = 3


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the service's stop event decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AsgiServer:
    """One uvicorn server for one app on host:port, stopped by the service's stop event."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.host = host
        self._server = _Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            )
        )

    @property
    def port(self) -> int | None:
        """Return the port it listens on once it does (port 0 picks a free one)."""
        server = self._server
        if not server.started or not server.servers:
            return None
        return int(server.servers[0].sockets[0].getsockname()[1])

    async def serve(self, stop: asyncio.Event, *, on_listening: Any = None) -> bool:
        """Serve until stop is set; False when it could not listen (uvicorn gave up at start)."""
        serving = asyncio.create_task(_serve_quietly(self._server), name="http server")
        stopping = asyncio.create_task(stop.wait())
        try:
            # uvicorn offers no event for "listening": look at its flag until it is up or gone.
            while not (self._server.started or serving.done() or stop.is_set()):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if self._server.started and on_listening is not None:
                on_listening(self.port)
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._server.should_exit = True
            stopping.cancel()
            listened = await serving
        return listened


async def _serve_quietly(server: uvicorn.Server) -> bool:
    try:
        await server.serve()
    except SystemExit:
        return False
    return True
