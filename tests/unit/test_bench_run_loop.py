"""The benches' event loop: uvloop, as the services run, and the coroutine's own result or error."""

from __future__ import annotations

import asyncio

import pytest

from tests.bench.load import run_loop


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


async def _fails() -> None:
    raise ImportError("raised inside the bench, not a missing uvloop")


def test_a_bench_runs_on_uvloop_and_gets_its_result() -> None:
    uvloop = pytest.importorskip("uvloop")  # a dependency except on Windows
    assert run_loop(_loop_type()) is uvloop.Loop


def test_an_import_error_inside_the_bench_is_its_failure_not_a_reason_to_run_it_again() -> None:
    with pytest.raises(ImportError, match="raised inside the bench"):
        run_loop(_fails())
