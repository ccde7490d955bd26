"""The pure parts of `intentflow up`: restart pacing, exit descriptions, child env, banner, healthcheck target."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from services.up import plan
from services.up.healthcheck import running_service


def test_restart_delay_doubles_from_half_a_second_and_stops_at_thirty() -> None:
    delays = [plan.restart_delay(n) for n in range(1, 10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays[-1] == plan.MAX_RESTART_DELAY_S
    assert delays == sorted(delays)


def test_describe_exit_names_the_signal() -> None:
    assert plan.describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert plan.describe_exit(1) == "exit code 1"


def test_services_run_as_compose_runs_them() -> None:
    assert plan.service_argv("orchestrator")[-3:] == ["services", "run", "orchestrator"]
    with pytest.raises(ValueError, match="signal-monitor"):
        plan.service_argv("signal_monitor")


def test_dummy_token_looks_like_a_bot_token() -> None:
    from shared.logging import scrub

    token = plan.dummy_bot_token()
    assert scrub(f"token {token} here") == "token *** here"  # the redaction pattern recognises it


def test_child_env_sets_what_up_decided_over_the_callers() -> None:
    env = plan.child_env(
        {"PATH": "/bin", "REDIS_URL": "stale", "WATCHLIST_FILE": "mine.toml"},
        data_dir=Path("/d"),
        redis_url="redis://127.0.0.1:1/0",
        database_url="postgresql://postgres@127.0.0.1:2/intentflow",
        diagnostics_port=8000,
        webhook_port=8001,
        webhook_secret="s3cret",
        telegram={"TELEGRAM_API_URL": "http://127.0.0.1:8081"},
        watchlist=None,
    )
    assert env["PATH"] == "/bin" and env["REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert env["WATCHLIST_FILE"] == "mine.toml" and env["LOG_FORMAT"] == "console"
    assert env["TELEGRAM_API_URL"] == "http://127.0.0.1:8081" and env["INTENTFLOW_DATA_DIR"] == "/d"


def test_demo_watchlist_is_the_shipped_sample() -> None:
    assert plan.DEMO_WATCHLIST.name == "watchlist.sample.toml"
    assert plan.DEMO_WATCHLIST.is_file()


def test_banner_hides_the_database_password_and_points_verify_at_a_moved_port() -> None:
    ends = plan.Endpoints(
        diagnostics_port=8123,
        webhook_port=8001,
        sandbox_url="http://127.0.0.1:8081",
        redis_url="redis://127.0.0.1:1/0",
        database_url="postgresql://app:hunter2@db:5432/x",
        redis_embedded=True,
        database_embedded=False,
        data_dir=Path("/d"),
        webhook_secret_file=Path("/d/webhook_secret"),
    )
    text = plan.banner(ends, demo=True)
    assert "hunter2" not in text and "app:***@db" in text
    assert "intentflow verify --url http://127.0.0.1:8123" in text
    assert "/d/webhook_secret" in text and "http://127.0.0.1:8081/sandbox/messages" in text


def test_healthcheck_finds_the_service_the_container_runs() -> None:
    procs = [["/sbin/docker-init", "--", "intentflow", "run", "notifier"], ["python", "-m", "x"]]
    assert running_service(procs) == "notifier"
    assert running_service([["intentflow", "telegram-sandbox", "--port", "8081"]]) == "telegram-sandbox"
    assert running_service([["intentflow", "migrate"]]) is None
