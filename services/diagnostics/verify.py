"""`intentflow verify`: ask diagnostics for the verdict and say it in a few readable lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from services.diagnostics.models import VIOLATION_TYPES

EXIT_PASS = 0
EXIT_VIOLATIONS = 1
EXIT_UNREACHABLE = 2
RECENT_SIGNALS_PATH = "/api/diagnostics/recent-signals"


@dataclass(frozen=True)
class Verdict:
    """What verify prints (stdout), complains about (stderr), and exits with."""

    code: int
    out: str = ""
    err: str = ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render(report: dict[str, Any], url: str) -> str:
    """Render a recent-signals report: the verdict, the counts, then each violation."""
    counts = report["counts"]
    violations_total = sum(int(counts[k]) for k in VIOLATION_TYPES)
    signals = _plural(int(counts["total_signals"]), "signal")
    head = (
        f"PASS: {signals} in the last {report['hours']} h, every one decided and every failure announced"
        if report["pass"]
        else f"FAIL: {_plural(violations_total, 'violation')} among {signals} in the last {report['hours']} h"
    )
    lines = [
        head,
        f"  diagnostics: {url}",
        "  signals: "
        + ", ".join(
            f"{key.replace('_', ' ')} {counts[key]}"
            for key in ("total_signals", "placed", "failed", "dedup", "blocked", "in_flight")
        ),
        "  violations: " + ", ".join(f"{key} {counts[key]}" for key in VIOLATION_TYPES),
    ]
    violations = report.get("violations") or []
    if violations:
        lines.append("")
        for v in violations:
            lines.append(
                f"  {v['type']:<24} {v.get('signal_id') or '(no signal id)'}  "
                f"{v.get('symbol') or '?'}  {v['detail']}"
            )
        if len(violations) < violations_total:
            lines.append(
                f"  … {violations_total - len(violations)} more not listed (the list is cut at `limit`)"
            )
    return "\n".join(lines)


def verify(
    url: str,
    *,
    hours: int | None = None,
    grace_seconds: int | None = None,
    token: str | None = None,
    as_json: bool = False,
    timeout: float = 30.0,
) -> Verdict:
    """Fetch the verdict from diagnostics at url; exit code 0 pass, 1 violations, 2 unreachable/error."""
    params = {k: v for k, v in (("hours", hours), ("grace_seconds", grace_seconds)) if v is not None}
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = url.rstrip("/")
    try:
        response = httpx.get(base + RECENT_SIGNALS_PATH, params=params, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return Verdict(
            EXIT_UNREACHABLE,
            err=f"diagnostics at {base} cannot be reached ({type(exc).__name__}: {exc}); "
            "is `intentflow run diagnostics` running, and is --url (DIAGNOSTICS_URL) right?",
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or "pass" not in body:
        detail = body.get("message") or body.get("detail") if isinstance(body, dict) else None
        hint = " (give --token or set DIAGNOSTICS_TOKEN)" if response.status_code == 401 else ""
        return Verdict(
            EXIT_UNREACHABLE,
            err=f"diagnostics at {base} answered {response.status_code}: "
            f"{detail or response.text[:300]}{hint}",
        )
    code = EXIT_PASS if body["pass"] else EXIT_VIOLATIONS
    out = json.dumps(body, indent=2) if as_json else render(body, base)
    return Verdict(code, out=out)
