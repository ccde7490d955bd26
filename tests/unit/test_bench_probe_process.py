"""A bench probe as a process of its own: started before the window, its summary read after."""

from __future__ import annotations

import sys

import pytest

from tests.bench.probe_process import ProbeProcess, module_command


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_probe_that_ends_without_saying_ready_stops_the_window_from_starting() -> None:
    with (
        pytest.raises(RuntimeError, match="did not start"),
        ProbeProcess(module_command("tests.bench.no_such_probe")),
    ):
        pass


def test_a_probe_that_fails_after_it_started_leaves_the_empty_result() -> None:
    failing = "import sys; print('ready', flush=True); sys.stdin.readline(); sys.exit(3)"
    with ProbeProcess(_python(failing), empty={"device": None}) as probe:
        pass
    assert probe.result == {"device": None}


def test_what_the_probe_prints_when_told_to_stop_is_the_result() -> None:
    answering = "import sys; print('ready', flush=True); sys.stdin.readline(); print('{\"seen\": 7}')"
    with ProbeProcess(_python(answering)) as probe:
        assert probe.result == {}  # nothing until the window ends
    assert probe.result == {"seen": 7}
