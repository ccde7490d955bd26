"""`intentflow` loads each room's commands without the rooms' servers and clients."""

from __future__ import annotations

import subprocess
import sys


def modules_after_importing_the_cli() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, services.cli; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.split())


def test_the_command_line_imports_no_service_server_or_bot_client():
    loaded = modules_after_importing_the_cli()
    assert "services.cli" in loaded
    heavy = {"aiohttp.web", "aiogram", "services.telegram_sandbox.app", "alembic", "sqlalchemy"}
    assert not heavy & loaded
