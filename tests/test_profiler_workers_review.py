"""Review of the profile that follows perfkit.Parallel into its workers:
what a user hits beyond tests/test_profiler_workers.py.

The anchor is cProfile on the same tasks run in one process; a reply's
bytes tell whether a worker recorded its batch (the tree after the pickle,
ending with WORKER_TREE_MARK).
"""

from __future__ import annotations

import cProfile
import os

import perfkit
import perfkit.parallel
import pytest
from perfkit import Parallel, _native, delayed

pytestmark = pytest.mark.version_sensitive  # each CPython's hooks record in the workers

THIS_FILE = os.path.abspath(__file__)


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def task(x):
    return fib(10) + x


def counts(stats: dict) -> dict:
    """{function name: (primitive calls, all calls)} of a pstats dict, for this file's functions."""
    return {name: (cc, nc) for (f, _, name), (cc, nc, *_rest) in stats.items() if f == THIS_FILE}


def cprofile_of_tasks(func, items) -> dict:
    prof = cProfile.Profile()
    prof.enable()
    for x in items:
        func(x)
    prof.disable()
    prof.create_stats()
    return prof.stats


@pytest.fixture
def replies(monkeypatch):
    """Every reply the caller takes in, as (whether it carries a worker's tree)."""
    seen: list[bool] = []
    original = perfkit.parallel._ProcessCall._next_event

    def next_event(self, in_flight):
        event = original(self, in_flight)
        if event is not None and event[0] == "reply":
            seen.append(
                bytes(memoryview(event[4])[-len(_native.WORKER_TREE_MARK) :]) == _native.WORKER_TREE_MARK
            )
        return event

    monkeypatch.setattr(perfkit.parallel._ProcessCall, "_next_event", next_event)
    return seen


def test_an_explicit_batch_size_holds_in_a_recording(replies):
    # The caller's loop kept the length of a recorded reply's pickle as the
    # next batch's number of tasks: with batch_size=1, a task returning 200
    # bytes made the next batch ~250 tasks, and one worker ran 98 of 100.
    n = 40
    with Parallel(n_jobs=2, batch_size=1) as par:
        plain = par(delayed(task)(i) for i in range(n))
        unrecorded = len(replies)
        del replies[:]
        with perfkit.Profiler() as prof:
            recorded = par(delayed(task)(i) for i in range(n))
    assert recorded == plain == [fib(10) + i for i in range(n)]
    assert unrecorded == n
    assert len(replies) == n  # one task a batch, as asked, and as without the profiler
    assert all(replies)
    prof.create_stats()
    assert counts(prof.stats)["task"] == counts(cprofile_of_tasks(task, range(n)))["task"] == (n, n)


def test_a_call_outside_any_recording_sends_no_tree(replies):
    with Parallel(n_jobs=2) as par:
        with perfkit.Profiler():
            par(delayed(task)(i) for i in range(10))
        recorded = list(replies)
        del replies[:]
        par(delayed(task)(i) for i in range(10))  # the same workers, after the recording
    assert recorded and all(recorded)
    assert replies and not any(replies)
