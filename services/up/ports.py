"""Pick the ports `up` serves on: the configured one, or a free one when the default is taken."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from shared.embedded import free_port


class PortTaken(RuntimeError):
    """A port set explicitly is held by another process; the message says which variable to change."""


@dataclass(frozen=True)
class PortChoice:
    """The port to use, and a note when it is not the one asked for."""

    port: int
    note: str | None = None


def port_is_free(host: str, port: int) -> bool:
    """Return True when a server could listen on host:port now (as uvicorn and aiohttp bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The servers set SO_REUSEADDR too, so a port in TIME_WAIT counts as free, a listener does not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def choose_port(variable: str, port: int, *, explicit: bool, host: str) -> PortChoice:
    """Keep port when free; when taken, fail if it was set explicitly, else take a free one and say so."""
    if port_is_free(host, port):
        return PortChoice(port)
    if explicit:
        raise PortTaken(
            f"{variable}={port} is already in use on {host}: stop what listens there "
            f"(`ss -ltnp 'sport = :{port}'` shows it) or set {variable} to a free port"
        )
    other = free_port(host if host not in ("0.0.0.0", "") else "127.0.0.1")
    return PortChoice(
        other,
        f"port {port} ({variable}'s default) is in use; using {other} instead (set {variable} to choose)",
    )
