"""compose.yaml runs real `intentflow` commands with known settings, scales, and checks health."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
import yaml

from services.cli import app
from shared.settings import known_variables

try:  # typer vendors click since 0.2x; its errors are click's shape under typer's name
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click import UsageError  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "intentflow:latest"
SERVICES = ("signal-monitor", "orchestrator", "notifier", "diagnostics")
SCALED = ("orchestrator", "notifier")
PUBLISHED = {"diagnostics": 8000, "signal-monitor": 8001}
# Variables compose.yaml reads that no intentflow setting does (listed in .env.example too).
COMPOSE_ONLY = {"POSTGRES_PASSWORD", "PUBLISH_HOST"}
POSTGRES_IMAGE_VARIABLES = {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}
REQUIRED_SECRETS = {
    "notifier": {"TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID"},
    "signal-monitor": {"WEBHOOK_SECRET"},
    "postgres": {"POSTGRES_PASSWORD"},
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


@pytest.fixture(scope="module")
def ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the intentflow image."""
    return {name: s for name, s in compose["services"].items() if s.get("image") == IMAGE}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def resolve(argv: list[str]) -> typer.Context:
    """Parse argv as the intentflow command line would; raise UsageError where it would refuse."""
    group: Any = typer.main.get_command(app)
    name, *args = argv
    command = group.get_command(typer.Context(group), name)
    if command is None:
        raise UsageError(f"no such intentflow command {name!r}")
    return command.make_context(name, list(args))


def test_the_four_services_migrate_and_servers_are_there(compose, ours) -> None:
    assert set(SERVICES) <= set(ours)
    assert "migrate" in ours
    assert compose["services"]["redis"]["image"].startswith("redis:7")
    assert compose["services"]["postgres"]["image"].startswith("postgres:16")


def test_every_command_is_a_real_intentflow_command(ours) -> None:
    for name, service in ours.items():
        command = service["command"]
        assert isinstance(command, list), f"{name}: give the command as a list"
        resolve(command)  # raises on an unknown command, option or SERVICE choice
    for name in SERVICES:
        assert ours[name]["command"] == ["run", name]
        assert str(resolve(ours[name]["command"]).params["service"]) == name
    assert ours["migrate"]["command"] == ["migrate"]


def test_the_resolver_refuses_what_intentflow_refuses() -> None:
    with pytest.raises(UsageError):
        resolve(["run", "signal_monitor"])
    with pytest.raises(UsageError):
        resolve(["serve", "orchestrator"])
    with pytest.raises(UsageError):
        resolve(["telegram-sandbox", "--no-such-option"])


def test_one_image_built_from_the_dockerfile(ours) -> None:
    for name, service in ours.items():
        assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
    assert (ROOT / "deploy" / "Dockerfile").is_file()


def test_every_environment_variable_is_a_known_setting(compose, ours) -> None:
    known = known_variables()
    for name, service in ours.items():
        unknown = set(_environment(service)) - known
        assert not unknown, f"{name} sets variables no setting reads: {sorted(unknown)}"
    postgres_env = set(_environment(compose["services"]["postgres"]))
    assert postgres_env <= POSTGRES_IMAGE_VARIABLES
    interpolated = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (ROOT / "compose.yaml").read_text()))
    assert not interpolated - known - COMPOSE_ONLY, f"unknown: {sorted(interpolated - known - COMPOSE_ONLY)}"


def test_required_secrets_fail_with_a_message_when_missing(compose) -> None:
    for name, variables in REQUIRED_SECRETS.items():
        env = _environment(compose["services"][name])
        for variable in variables:
            assert re.fullmatch(rf"\$\{{{variable}:\?.+\}}", env[variable]), (
                f"{name}: {variable}={env[variable]}"
            )


def test_services_bind_all_addresses_and_talk_to_the_compose_servers(ours) -> None:
    for name in [*SERVICES, "migrate"]:
        env = _environment(ours[name])
        assert env["BIND_HOST"] == "0.0.0.0", name
        assert env["REDIS_URL"].startswith("redis://redis:"), name
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"], name


def test_scaled_services_have_no_fixed_name_or_host_port(compose) -> None:
    for name in SCALED:
        service = compose["services"][name]
        assert "container_name" not in service, name
        assert not service.get("ports"), name


def test_published_ports_map_onto_the_port_the_service_listens_on(compose) -> None:
    variable = {"diagnostics": "DIAGNOSTICS_PORT", "signal-monitor": "WEBHOOK_PORT"}
    for name, inside in PUBLISHED.items():
        service = compose["services"][name]
        assert "container_name" not in service
        (mapping,) = service["ports"]
        assert str(mapping).endswith(f":{inside}"), mapping
        # The listening port is pinned inside the container, so a host port set in .env
        # (passed through env_file) cannot move the server away from the mapping.
        assert _environment(service)[variable[name]] == str(inside)


def test_healthchecks(compose, ours) -> None:
    services = compose["services"]
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert services["redis"]["volumes"] and services["postgres"]["volumes"]
    for name in SERVICES:
        test = ours[name]["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "services.up.healthcheck"], name
        assert test[4] == name


def test_services_wait_for_healthy_servers_and_a_finished_migration(compose, ours) -> None:
    for name in SERVICES:
        depends = ours[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert ours["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ours["migrate"]["restart"] == "no"


def test_env_file_is_optional(ours) -> None:
    for name, service in ours.items():
        assert {"path": ".env", "required": False} in service["env_file"], name


def test_sandbox_is_behind_a_profile(compose) -> None:
    sandbox = compose["services"]["telegram-sandbox"]
    assert sandbox["profiles"] == ["sandbox"]
    assert resolve(sandbox["command"]).params["port"] == 8081


def _compose_command() -> list[str] | None:
    """Return `docker compose`, else a standalone Compose v2 `docker-compose`, else None."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        found = shutil.which(argv[0])
        if found is None:
            continue
        argv = [found, *argv[1:]]
        try:
            version = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if version.returncode == 0 and re.search(r"v?2\.\d+", version.stdout):
            return argv
    return None


COMPOSE = _compose_command()


@pytest.mark.skipif(COMPOSE is None, reason="no `docker compose` (v2) here")
def test_docker_compose_accepts_the_file(tmp_path) -> None:
    assert COMPOSE is not None
    empty = tmp_path / "empty.env"
    empty.write_text("")
    base = [*COMPOSE, "-f", str(ROOT / "compose.yaml"), "--env-file", str(empty)]
    secrets = {
        "POSTGRES_PASSWORD": "pw",
        "TELEGRAM_BOT_TOKEN": "123456:AAtest",
        "TELEGRAM_CHAT_ID": "1",
        "WEBHOOK_SECRET": "s",
    }
    path = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    for profile in ([], ["--profile", "sandbox"]):
        checked = subprocess.run(
            [*base, *profile, "config", "-q"],
            capture_output=True,
            text=True,
            env={**path, **secrets},
            timeout=60,
        )
        assert checked.returncode == 0, checked.stderr
    missing = subprocess.run(
        [*base, "config", "-q"],
        capture_output=True,
        text=True,
        env={**path, "POSTGRES_PASSWORD": "pw"},
        timeout=60,
    )
    assert missing.returncode != 0
    assert "TELEGRAM_BOT_TOKEN" in missing.stderr or "WEBHOOK_SECRET" in missing.stderr


def test_dockerfile_small_non_root_cached_with_a_healthcheck() -> None:
    lines = [line.strip() for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    froms = [line for line in instructions if line.startswith("FROM ")]
    assert froms and all(line.split()[1] == "python:3.11-slim" for line in froms)
    # Dependencies install from pyproject.toml alone, before any source is copied.
    copy_pyproject = instructions.index("COPY pyproject.toml ./")
    install_deps = next(i for i, line in enumerate(instructions) if "pip install -r" in line)
    copy_source = instructions.index("COPY services ./services")
    assert copy_pyproject < install_deps < copy_source
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and not users[-1].startswith(("root", "0"))
    assert any(line.startswith("HEALTHCHECK ") for line in instructions)
    assert 'ENTRYPOINT ["intentflow"]' in instructions
    assert 'CMD ["run", "orchestrator"]' in instructions
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".env", ".venv", ".git", ".intentflow"} <= set(ignored)


def test_the_image_holds_every_file_the_package_build_names() -> None:
    """`pip install --no-deps .` in the image reads the readme and license files pyproject.toml
    names: each is copied in before that install and not kept out by .dockerignore."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = [project["readme"], *project.get("license-files", [])]
    assert "LICENSE" in named and (ROOT / "LICENSE").is_file()
    lines = [line.strip() for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    install = instructions.index("RUN pip install --no-deps .")
    copied = {
        source
        for line in instructions[:install]
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    }
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for name in named:
        assert name in copied, f"{name} is not copied into the image before the install"
        assert name not in ignored, f".dockerignore keeps {name} out of the build context"
