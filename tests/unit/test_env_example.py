""".env.example lists every variable the settings read, once, and nothing else but compose's own."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import Settings, known_variables

ROOT = Path(__file__).resolve().parents[2]
# Read by compose.yaml only (the postgres image's password, where ports are published).
COMPOSE_ONLY = {"POSTGRES_PASSWORD", "PUBLISH_HOST"}
_VARIABLE = re.compile(r"^#?\s?([A-Z][A-Z0-9_]*)=(.*)$")


def listed() -> list[tuple[str, str]]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return [(m[1], m[2]) for m in map(_VARIABLE.match, lines) if m]


def test_every_known_variable_is_listed_once_and_nothing_else() -> None:
    names = [name for name, _ in listed()]
    assert len(names) == len(set(names)), f"listed twice: {sorted({n for n in names if names.count(n) > 1})}"
    missing = known_variables() - set(names)
    unknown = set(names) - known_variables() - COMPOSE_ONLY
    assert not missing, f".env.example lacks {sorted(missing)}"
    assert not unknown, f".env.example lists variables no setting reads: {sorted(unknown)}"
    assert set(names) >= COMPOSE_ONLY


def test_each_variable_has_a_comment_or_a_group_above_it() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        if _VARIABLE.match(line):
            above = lines[i - 1]
            assert above.startswith("#"), f"{line!r} has no comment or group header above it"


def test_copied_as_is_it_changes_nothing(tmp_path, monkeypatch) -> None:
    # Every line is commented out: a fresh `cp .env.example .env` must leave the defaults,
    # so that `intentflow up` still starts embedded servers and the sandbox.
    for name in known_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    settings = Settings()
    assert settings.redis.redis_url is None and settings.database.database_url is None
    assert settings.telegram.telegram_bot_token is None
    assert not settings.runtime.model_fields_set and not settings.diagnostics.model_fields_set
    assert all(
        line.startswith("#") or not line.strip() for line in (tmp_path / ".env").read_text().splitlines()
    )


def test_shown_defaults_are_the_settings_defaults(tmp_path, monkeypatch) -> None:
    # Uncommenting a line as shown must not change anything either (except the compose-only ones).
    for name in known_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    defaults = Settings()
    shown = [f"{name}={value.split('  #')[0].strip()}" for name, value in listed() if value.strip()]
    (tmp_path / ".env").write_text("\n".join(n for n in shown if n.split("=")[0] not in COMPOSE_ONLY) + "\n")
    uncommented = Settings()
    for piece in vars(defaults):
        before = getattr(defaults, piece).model_dump()
        after = getattr(uncommented, piece).model_dump()
        assert before == after, f"{piece}: the values shown in .env.example differ from the defaults"
