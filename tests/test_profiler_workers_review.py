"""Review of the profile that follows perfkit.Parallel into its workers:
what a user hits beyond tests/test_profiler_workers.py.

The anchor is cProfile on the same tasks run in one process; a reply's
bytes tell whether a worker recorded its batch (the tree after the pickle,
ending with WORKER_TREE_MARK).
"""

from __future__ import annotations

import os

import perfkit
import perfkit.parallel
import pytest
from conftest import counts_by_name, cprofile_of_tasks
from perfkit import Parallel, _native, delayed

pytestmark = pytest.mark.version_sensitive  # each CPython's hooks record in the workers

THIS_FILE = os.path.abspath(__file__)


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def task(x):
    return fib(10) + x


def counts(stats: dict) -> dict:
    return counts_by_name(stats, THIS_FILE)


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


def test_a_generator_made_before_a_recording_is_recorded_from_the_batches_dispatched_in_it():
    # A generator's first batches go out when it is made; the rest as it is
    # drawn. Drawn inside a recording, those later batches ran in the workers
    # unrecorded: the profile had no worker thread at all.
    n = 80
    par = Parallel(n_jobs=2, return_as="generator", batch_size=1)
    gen = par(delayed(task)(i) for i in range(n))
    before = par.n_dispatched_tasks
    assert 0 < before < n
    with perfkit.Profiler() as prof:
        out = list(gen)
    assert out == [fib(10) + i for i in range(n)]
    prof.create_stats()
    anchor = counts(cprofile_of_tasks(task, range(before, n)))
    got = counts(prof.stats)
    assert got.get("task") == anchor["task"] == (n - before, n - before)
    assert got.get("fib") == anchor["fib"]


def test_a_generator_drawn_after_its_recording_sends_no_more_trees(replies):
    # Made in a recording and drawn after it, a generator's workers went on
    # recording every batch and sending its tree, which the caller dropped.
    n = 80
    par = Parallel(n_jobs=2, return_as="generator_unordered", batch_size=1)
    with perfkit.Profiler() as prof:
        gen = par(delayed(task)(i) for i in range(n))
        first = [next(gen) for _ in range(3)]
    dispatched_while_recording = par.n_dispatched_tasks
    rest = list(gen)
    assert sorted(first + rest) == [fib(10) + i for i in range(n)]
    assert len(replies) == n
    assert 0 < sum(replies) <= dispatched_while_recording < n
    prof.create_stats()
    assert 3 <= counts(prof.stats)["task"][0] <= dispatched_while_recording


def test_a_call_outside_any_recording_sends_no_tree(replies):
    with Parallel(n_jobs=2) as par:
        with perfkit.Profiler():
            par(delayed(task)(i) for i in range(10))
        recorded = list(replies)
        del replies[:]
        par(delayed(task)(i) for i in range(10))  # the same workers, after the recording
    assert recorded and all(recorded)
    assert replies and not any(replies)
