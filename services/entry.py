"""The `intentflow` console script: exit 0 on SIGTERM from the very first instant.

Importing a service takes about a second; a SIGTERM in that second (Docker stopping a
container that just started) would otherwise kill the process by the signal (exit 143)
instead of the clean exit the contract promises. Services replace this handler with
their own graceful one once their event loop runs.
"""

import signal
import sys


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


def main() -> None:
    """Install the early SIGTERM handler, then hand over to the CLI."""
    signal.signal(signal.SIGTERM, _exit_cleanly)
    from services.cli import main as cli_main

    cli_main()
