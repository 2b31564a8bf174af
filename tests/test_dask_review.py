"""perfkit.Parallel's dask backend as a joblib dask-backend user meets it:
each test runs the same call with joblib's and perfkit's backend="dask" on
one small LocalCluster (loopback, closed at the end) and expects what
joblib gives."""

from __future__ import annotations

import sys

import joblib
import perfkit
import pytest


def exit_at(i, at=1):
    if i == at:
        sys.exit(3)
    return i


def interrupt_at(i, at=1):
    if i == at:
        raise KeyboardInterrupt
    return i


def square(x):
    return x * x


def _raised(call):
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the type is what the test compares
        return type(exc)
    return None


@pytest.mark.parametrize("task", [exit_at, interrupt_at])
def test_a_task_raising_system_exit_or_keyboard_interrupt_raises_it_and_keeps_the_workers(dask_client, task):
    # A task calling sys.exit() (a CLI entry point reused as a task, say) or
    # raising KeyboardInterrupt killed its dask worker, then the three it was
    # given to after that, and the call ended ~9 s later in dask's
    # KilledWorker; joblib's dask backend raises the task's own exception at
    # once, as perfkit's processes backend does.
    with joblib.parallel_config(backend="dask"):
        expected = _raised(lambda: joblib.Parallel()(joblib.delayed(task)(i) for i in range(4)))
    assert expected in (SystemExit, KeyboardInterrupt)
    workers = set(dask_client.nthreads())
    with perfkit.parallel_config(backend="dask", client=dask_client):
        got = _raised(lambda: perfkit.Parallel()(perfkit.delayed(task)(i) for i in range(4)))
    assert got is expected  # (not dask's KilledWorker)
    assert set(dask_client.nthreads()) == workers  # (no worker died)
    with perfkit.parallel_config(backend="dask", client=dask_client):
        assert perfkit.Parallel()(perfkit.delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
