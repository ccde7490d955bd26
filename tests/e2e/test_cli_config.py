"""Every command refuses a bad setting the same way: exit 2, naming the setting."""

from __future__ import annotations

import pytest

from tests.support.procs import run_cli


@pytest.mark.parametrize(
    "argv",
    [
        ("migrate",),
        ("publish", "BUY", "BTC_USDT", "--price", "1"),
        ("brake", "status"),
        ("dead-letter", "list"),
    ],
)
def test_a_bad_setting_exits_2_naming_it(service_env, argv) -> None:
    done = run_cli(*argv, env={**service_env, "TRADING_MODE": "sideways"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "bad configuration" in done.stderr and "trading_mode" in done.stderr


def test_without_redis_and_without_up_the_error_names_redis_url(service_env) -> None:
    env = {**service_env, "REDIS_URL": ""}
    done = run_cli("dead-letter", "list", env=env)
    assert done.returncode == 2
    assert "REDIS_URL is not set" in done.stderr
