"""A profile follows perfkit.Parallel's dask backend into its workers.

While a perfkit profiler records, the dask workers that run a Parallel
call's batches record them with the same mode and clock and send each
batch's calls back with its results; the caller's profile holds one thread
per dask worker process ("dask worker ADDRESS (pid N)"). A dask worker runs
several batches at once, in threads, under one recording: each batch sends
the calls of its own thread only. The anchor is cProfile on the same tasks
run in one process, as in test_profiler_workers.py.
"""

from __future__ import annotations

import contextlib
import cProfile
import os
import pstats
import threading
import time

import perfkit
import pytest
from conftest import c_calls_from, counts_by_name, cprofile_of_tasks
from perfkit import Parallel, _dask_worker, _native, delayed, parallel_config

pytestmark = pytest.mark.version_sensitive  # each CPython's hooks record in the workers

distributed = pytest.importorskip("distributed")

THIS_FILE = os.path.abspath(__file__)


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def task(x):
    return (os.getpid(), fib(12) + sorted([x, 3, 1])[0])  # noqa: FURB192 - a C call to count


def slow_task(x):
    """A task that takes long enough for a worker's two threads to run
    batches at the same time: which thread ran it, and fib's result."""
    time.sleep(0.02)
    return (threading.get_ident(), fib(10) + x)


def fails_at(x):
    if x == 5:
        raise ValueError("task 5 fails")
    return fib(8)


def profiled_inside(path):
    with perfkit.profile(path):
        return fib(10)


def cprofiled_inside(x):
    """A task that profiles itself with cProfile: what it saw of fib."""
    prof = cProfile.Profile()
    prof.enable()
    fib(10)
    prof.disable()
    prof.create_stats()
    return counts(prof.stats)["fib"]


def fails_at_caught(x):
    with contextlib.suppress(ValueError):
        fails_at(x)


# The anchors: cProfile's stats of the tasks run in this process, taken
# before this module's clusters start (see the `anchors` fixture).
ANCHORS = {
    "task": (task, range(60)),
    "task20": (task, range(20)),
    "slow_task": (slow_task, range(16)),
    "fails_at": (fails_at_caught, range(6)),
    "fib10": (fib, [10]),
    "fib9": (fib, [9]),
    "fib8": (fib, [8]),
    "fib6": (fib, [6]),
}


@pytest.fixture(scope="module", autouse=True)
def anchors():
    """ANCHORS' stats, by name. Taken first (an autouse fixture), while no
    dask Client runs here: from 3.12 on, cProfile records every thread of
    its process (through sys.monitoring, on one stack), and a Client's event
    loop thread would mix its calls into them."""
    return {name: cprofile_of_tasks(func, items) for name, (func, items) in ANCHORS.items()}


def counts(stats: dict, file: str = THIS_FILE) -> dict:
    return counts_by_name(stats, file)


def calls_from(stats: dict, name: str, caller: str) -> int:
    return c_calls_from(stats, name, THIS_FILE, caller)


def dask_threads(rec: perfkit.Recording) -> set:
    return {name for name, *_ in rec.threads() if name.startswith("dask worker")}


def worker_names(client, pids) -> set:
    """The thread names of the workers (of `client`'s cluster) whose pid is in `pids`."""
    return {f"dask worker {a} (pid {pid})" for a, pid in client.run(os.getpid).items() if pid in pids}


def sessions_started(client) -> int:
    return sum(client.run(lambda: _dask_worker.started).values())


def recording_left(client) -> list:
    return [a for a, left in client.run(lambda: _dask_worker._current is not None).items() if left]


def _cluster(**kwargs):
    return distributed.LocalCluster(host="127.0.0.1", dashboard_address=":0", **kwargs)


@pytest.fixture(scope="module")
def two_threads():
    """One worker process running two batches at once (two threads)."""
    with (
        _cluster(n_workers=1, threads_per_worker=2, processes=True) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def in_process():
    """A worker in this very process (two threads; dask's in-process transport)."""
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(params=["two_threads", "two_workers"])
def client(request):
    # two_workers: conftest's dask_client, two single-thread worker processes.
    return request.getfixturevalue("dask_client" if request.param == "two_workers" else request.param)


def test_dask_worker_calls_are_in_the_profile_as_cprofile_counts_them(client, anchors):
    # Before: the profile showed only this process waiting for the cluster.
    items = range(60)
    with parallel_config(backend="dask", client=client), perfkit.Profiler() as prof:
        results = Parallel()(delayed(task)(i) for i in items)
    assert [r[1] for r in results] == [fib(12) + min(i, 1) for i in items]
    prof.create_stats()
    anchor = anchors["task"]
    got = counts(prof.stats)
    assert got["task"] == counts(anchor)["task"] == (60, 60)
    assert got["fib"] == counts(anchor)["fib"]
    sorted_name = "<built-in method builtins.sorted>"
    assert calls_from(prof.stats, sorted_name, "task") == calls_from(anchor, sorted_name, "task") == 60
    # One thread per worker process that ran tasks, named after it.
    assert dask_threads(prof.recording()) == worker_names(client, {pid for pid, _ in results})
    # No recording left running in the workers after the call.
    assert recording_left(client) == []


def test_batches_running_at_once_in_one_worker_each_send_their_own_calls(two_threads, anchors):
    # Before (a recording per batch): a second batch's recording stopped the
    # first's, or one took the other thread's calls.
    items = range(16)
    with parallel_config(backend="dask", client=two_threads), perfkit.Profiler() as prof:
        results = Parallel(batch_size=1)(delayed(slow_task)(i) for i in items)
    assert [r[1] for r in results] == [fib(10) + i for i in items]
    assert len({ident for ident, _ in results}) == 2  # both threads ran batches
    prof.create_stats()
    anchor = anchors["slow_task"]
    assert counts(prof.stats)["slow_task"] == counts(anchor)["slow_task"] == (16, 16)
    assert counts(prof.stats)["fib"] == counts(anchor)["fib"]
    sleep_name = "<built-in method time.sleep>"
    assert (
        calls_from(prof.stats, sleep_name, "slow_task") == calls_from(anchor, sleep_name, "slow_task") == 16
    )
    assert len(dask_threads(prof.recording())) == 1


def test_the_tasks_are_the_top_of_a_dask_workers_tree(two_threads):
    with parallel_config(backend="dask", client=two_threads), perfkit.Profiler() as prof:
        Parallel()(delayed(task)(i) for i in range(20))
    rec = prof.recording()
    funcs = rec.funcs()
    (rows,) = [rows for name, _tid, _pid, rows in rec.threads() if name.startswith("dask worker")]
    shown = {funcs[f] for f, *_ in rows if f < len(funcs)}
    assert not [k for k in shown if k[0].endswith(("_dask_worker.py", "_dask.py"))]
    assert not [k for k in shown if "perfkit._native.Session" in k[2]]
    top = {funcs[f][2] for f, parent, *_ in rows[1:] if parent == 0}
    assert top == {"task"}


def test_a_worker_in_the_callers_process_is_not_counted_twice(in_process, monkeypatch, anchors):
    items = range(20)
    asked = []
    monkeypatch.setattr(_dask_worker, "_join", lambda recording: asked.append(recording))
    with parallel_config(backend="dask", client=in_process), perfkit.Profiler() as prof:
        Parallel(batch_size=2)(delayed(task)(i) for i in items)
    prof.create_stats()
    anchor = anchors["task20"]
    # This process's profiler recorded the worker's threads, once.
    assert counts(prof.stats)["task"] == counts(anchor)["task"] == (20, 20)
    assert counts(prof.stats)["fib"] == counts(anchor)["fib"]
    assert dask_threads(prof.recording()) == set()
    assert asked == []  # (its batches did not try to record)


def test_a_batch_that_raises_keeps_the_calls_up_to_its_error(two_threads, anchors):
    with (
        parallel_config(backend="dask", client=two_threads),
        perfkit.Profiler() as prof,
        pytest.raises(ValueError, match="task 5 fails"),
    ):
        Parallel(batch_size=12)(delayed(fails_at)(i) for i in range(12))
    prof.create_stats()
    # As cProfile's profile of the loop up to the exception.
    anchor = anchors["fails_at"]
    assert counts(prof.stats)["fails_at"] == counts(anchor)["fails_at"] == (6, 6)
    assert counts(prof.stats)["fib"] == counts(anchor)["fib"]


def test_a_recording_without_workers_leaves_the_dask_workers_out(two_threads):
    before = sessions_started(two_threads)
    with parallel_config(backend="dask", client=two_threads), perfkit.Profiler(workers=False) as prof:
        assert len(Parallel()(delayed(task)(i) for i in range(10))) == 10
    prof.create_stats()
    assert "task" not in counts(prof.stats)
    assert dask_threads(prof.recording()) == set()
    assert sessions_started(two_threads) == before


def test_nothing_is_recorded_in_dask_workers_outside_a_recording(client):
    before = sessions_started(client)
    with parallel_config(backend="dask", client=client):
        assert len(Parallel()(delayed(task)(i) for i in range(10))) == 10
    assert sessions_started(client) == before
    # Nor does a batch send a tree.
    assert (
        client.submit(perfkit._dask.run_chunk, [(0, (task, (1,), {}))], {}, False, None).result()[2] is None
    )
    # (while a recorded call does both)
    with parallel_config(backend="dask", client=client), perfkit.Profiler() as prof:
        Parallel()(delayed(task)(i) for i in range(10))
    assert sessions_started(client) > before
    assert len(dask_threads(prof.recording())) >= 1


def test_a_tasks_own_perfkit_profile_takes_over_in_the_worker(dask_client, tmp_path, anchors):
    paths = [str(tmp_path / f"task{i}.prof") for i in range(2)]
    with parallel_config(backend="dask", client=dask_client), perfkit.Profiler() as prof:
        assert Parallel(batch_size=1)(delayed(profiled_inside)(p) for p in paths) == [fib(10)] * 2
    for path in paths:
        # The task's own file holds its work, counted as cProfile counts it.
        assert counts(pstats.Stats(path).stats)["fib"] == counts(anchors["fib10"])["fib"]
    prof.create_stats()
    assert counts(prof.stats)["profiled_inside"] == (2, 2)
    assert recording_left(dask_client) == []


@pytest.mark.parametrize("builtins", [True, False], ids=["full", "python-frames"])
def test_a_task_that_starts_cprofile_runs_as_unprofiled(dask_client, builtins, anchors):
    with parallel_config(backend="dask", client=dask_client):
        unprofiled = Parallel(batch_size=1)(delayed(cprofiled_inside)(i) for i in range(4))
        with perfkit.Profiler(builtins=builtins) as prof:
            profiled = Parallel(batch_size=1)(delayed(cprofiled_inside)(i) for i in range(4))
        assert profiled == unprofiled == [counts(anchors["fib10"])["fib"]] * 4
        prof.create_stats()
        assert counts(prof.stats)["cprofiled_inside"] == (4, 4)
        # The workers record the next recorded call again.
        with perfkit.Profiler() as again:
            Parallel()(delayed(task)(i) for i in range(4))
    again.create_stats()
    assert counts(again.stats)["task"] == (4, 4)


@pytest.mark.parametrize(("builtins", "clock"), [(False, "wall"), (True, "cpu")])
def test_dask_workers_record_in_the_callers_mode_and_clock(two_threads, builtins, clock, anchors):
    with (
        parallel_config(backend="dask", client=two_threads),
        perfkit.Profiler(builtins=builtins, clock=clock) as prof,
    ):
        Parallel()(delayed(task)(i) for i in range(20))
    prof.create_stats()
    assert counts(prof.stats)["task"] == (20, 20)
    assert counts(prof.stats)["fib"] == counts(anchors["task20"])["fib"]
    rec = prof.recording()
    funcs = rec.funcs()
    (rows,) = [rows for name, _tid, _pid, rows in rec.threads() if name.startswith("dask worker")]
    assert any(funcs[f][0] == "~" for f, *_ in rows if f < len(funcs)) == builtins


def test_each_thread_takes_only_its_own_calls_once(monkeypatch, anchors):
    # The recording's part without dask: two threads run batches at once
    # under one recording, and one of them a second batch; each batch's tree
    # holds its own thread's calls below the batch, and a second batch on a
    # thread does not send the first one's again.
    monkeypatch.setattr(_dask_worker, "_threads_left_out", list)
    trees = {}
    b_running, a1_done, a2_running = threading.Event(), threading.Event(), threading.Event()
    recording = (True, "wall")

    def hold(event):
        assert event.wait(10)

    def batch_a():
        trees["a1"] = _dask_worker.run([(0, (hold, (b_running,), {})), (1, (fib, (8,), {}))], recording, "a")[
            2
        ]
        a1_done.set()
        trees["a2"] = _dask_worker.run([(2, (a2_running.set, (), {})), (3, (fib, (6,), {}))], recording, "a")[
            2
        ]

    def batch_b():
        trees["b"] = _dask_worker.run(
            [
                (0, (b_running.set, (), {})),
                (1, (hold, (a1_done,), {})),
                (2, (fib, (9,), {})),
                (3, (hold, (a2_running,), {})),
            ],
            recording,
            "b",
        )[2]

    threads = [threading.Thread(target=batch_a), threading.Thread(target=batch_b)]
    started = _dask_worker.started
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _dask_worker.started - started == 1  # all three batches under one recording
    assert _dask_worker._current is None  # stopped when the last one ended

    def fib_calls(tree):
        with perfkit.Profiler() as prof:
            assert _native.adopt_dask_tree(tree)
        prof.create_stats()
        return counts(prof.stats).get("fib")

    assert fib_calls(trees["a1"]) == counts(anchors["fib8"])["fib"]
    assert fib_calls(trees["a2"]) == counts(anchors["fib6"])["fib"]
    assert fib_calls(trees["b"]) == counts(anchors["fib9"])["fib"]


def test_a_dask_tree_that_cannot_be_read_is_left_out_with_a_warning():
    with perfkit.Profiler() as prof, pytest.warns(RuntimeWarning, match="dask worker"):
        assert _native.adopt_dask_tree(b"not a tree") is False
    assert dask_threads(prof.recording()) == set()


def test_nothing_is_adopted_outside_a_recording():
    tree = _dask_worker.run([(0, (fib, (5,), {}))], (True, "wall"), "w")[2]
    assert tree is not None
    assert _native.adopt_dask_tree(tree) is False
    with perfkit.Profiler(clock="cpu"):
        assert _native.adopt_dask_tree(tree) is False  # (another clock)
