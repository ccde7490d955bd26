"""`intentflow run signal-monitor` and `intentflow publish` as OS processes, observed through
Redis, HTTP and their output only."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from shared.embedded import free_port
from shared.streams import EVENT_FIELD, StreamNames
from tests.support.eventually import wait_sync
from tests.support.procs import Proc, intentflow, run_cli, wait_for_log
from tests.unit.test_strategy import DATA, predict_sample_signals

SECRET = "e2e-hook-s3cret-value"
SIGNAL_EVENTS = {
    "signal published",
    "signal held back by a gate",
    "signal already published: nothing new sent",
}


@pytest.fixture
def monitor_env(redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a signal monitor (and `intentflow publish`) for this test alone."""
    watchlist = (DATA / "watchlist.sample.toml").read_text()
    watchlist = watchlist.replace('path = "sample_candles.csv"', f'path = "{DATA / "sample_candles.csv"}"')
    watchlist = watchlist.replace("speed = 60 ", "speed = 0 ")
    (tmp_path / "watchlist.toml").write_text(watchlist)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("WEBHOOK_", "SIGNAL_", "WATCHLIST_", "REPLAY_", "FEED_"))
    }
    return {
        **env,
        "REDIS_URL": redis_url,
        "INTENTFLOW_STREAM_PREFIX": prefix,
        "INTENTFLOW_DATA_DIR": str(tmp_path / "data"),
        "WATCHLIST_FILE": str(tmp_path / "watchlist.toml"),
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_PORT": str(free_port()),
        "LOG_FORMAT": "json",
    }


@pytest.fixture
def sync_redis(redis_url: str, prefix: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def stream_events(redis: Redis, prefix: str) -> list[dict[str, Any]]:
    entries: Any = redis.xrange(StreamNames(prefix).signals, "-", "+")
    return [json.loads(fields[EVENT_FIELD]) for _, fields in entries]


def log_lines(output: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def test_service_replays_the_sample_serves_the_webhook_and_stops_on_sigterm(
    monitor_env: dict[str, str], sync_redis: Redis, prefix: str, tmp_path: Path
) -> None:
    expected = len(predict_sample_signals())
    proc = Proc(intentflow("run", "signal-monitor"), monitor_env, tmp_path / "monitor.log").start()
    try:
        wait_for_log(proc, "webhook serving")
        published = wait_sync(
            lambda: stream_events(sync_redis, prefix),
            until=lambda evs: len(evs) >= expected,
            what=f"{expected} strategy signals on the stream",
        )
        assert {e["source"] for e in published} == {"strategy"}
        wait_for_log(proc, "replay reached the end of its file")
        url = f"http://127.0.0.1:{monitor_env['WEBHOOK_PORT']}"
        alert = {"ticker": "BINANCE:BTCUSDT", "action": "buy", "close": 43000.5, "passphrase": SECRET}
        answer = httpx.post(f"{url}/webhook", json=alert)
        assert answer.status_code == 202, answer.text
        signal_id = answer.json()["signal_id"]
        after = stream_events(sync_redis, prefix)
        assert len(after) == expected + 1
        assert after[-1]["signal_id"] == signal_id and after[-1]["source"] == "webhook"
        assert httpx.get(f"{url}/readyz").status_code == 200
    finally:
        code = proc.terminate(timeout=10)
    output = proc.output()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output
    assert SECRET not in output
    about_signals = [line for line in log_lines(output) if line.get("event") in SIGNAL_EVENTS]
    assert len(about_signals) >= expected + 1
    assert all(uuid.UUID(line["signal_id"]) for line in about_signals), about_signals[:3]
    published_ids = {line["signal_id"] for line in about_signals if line["event"] == "signal published"}
    assert published_ids == {e["signal_id"] for e in after}


def test_publish_sends_through_the_gates_with_its_exit_codes(
    monitor_env: dict[str, str], sync_redis: Redis, prefix: str
) -> None:
    signal_id = str(uuid.uuid4())
    sent = run_cli(
        "publish", "buy", "BTC_USDT", "--price", "43210.5", "--signal-id", signal_id, env=monitor_env
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == signal_id
    [event] = stream_events(sync_redis, prefix)
    assert (event["signal_id"], event["side"], event["source"], event["strategy"]) == (
        signal_id,
        "BUY",
        "manual",
        "manual",
    )

    again = run_cli("publish", "BUY", "BTC_USDT", "--price", "1", "--signal-id", signal_id, env=monitor_env)
    assert again.returncode == 0
    assert again.stdout.strip() == signal_id
    assert "already published" in again.stderr

    invalid = run_cli("publish", "HOLD", "btc usdt", "--price", "NaN", env=monitor_env)
    assert invalid.returncode == 2
    assert all(field in invalid.stderr for field in ("side", "symbol", "price"))

    held = run_cli(
        "publish", "SELL", "BTC_USDT", "--price", "1", env={**monitor_env, "SIGNAL_KILL_SWITCH": "true"}
    )
    assert held.returncode == 3
    assert held.stdout == ""
    assert "KILL_SWITCH" in held.stderr and "not published" in held.stderr

    # The sample watchlist throttles rsi_ema:default on BTC_USDT: 300 s between two BUYs.
    first = run_cli(
        "publish", "BUY", "BTC_USDT", "--price", "100", "--strategy", "rsi_ema:default", env=monitor_env
    )
    assert first.returncode == 0, first.stderr
    second = run_cli(
        "publish", "BUY", "BTC_USDT", "--price", "200", "--strategy", "rsi_ema:default", env=monitor_env
    )
    assert second.returncode == 3
    assert "COOLDOWN" in second.stderr

    assert len(stream_events(sync_redis, prefix)) == 2

    down = run_cli(
        "publish",
        "BUY",
        "BTC_USDT",
        "--price",
        "1",
        env={**monitor_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
    )
    assert down.returncode == 1
    assert "nothing was published" in down.stderr
