"""`intentflow` loads each room's commands without the rooms' servers and clients."""

from __future__ import annotations

import subprocess
import sys


def modules_after_importing(module: str = "services.cli") -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.split())


def test_the_command_line_imports_no_service_server_or_bot_client():
    loaded = modules_after_importing()
    assert "services.cli" in loaded
    heavy = {"aiohttp.web", "aiogram", "services.telegram_sandbox.app", "alembic", "sqlalchemy"}
    assert not heavy & loaded


def test_the_orchestrator_does_not_load_the_table_models() -> None:
    # sqlmodel and the table models are for migrations and tests: ~10 MB the orchestrator would hold.
    loaded = modules_after_importing("services.orchestrator.app")
    assert "services.orchestrator.intents" in loaded
    assert not {"sqlmodel", "shared.tables"} & loaded
