"""A profile follows perfkit.Parallel into its worker processes.

While a perfkit profiler records, a Parallel call's workers record each
batch with the same mode and clock and send the tree back; the caller's
profile holds one thread per worker ("worker process PID"). The anchor is
cProfile on the same tasks run in one process: every function the tasks
call has the same number of calls in the parallel run's profile.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import subprocess
import sys
import textwrap
import warnings

import perfkit
import pytest
from conftest import c_calls_from, counts_by_name, cprofile_of_tasks, run_cli
from perfkit import Parallel, delayed

pytestmark = pytest.mark.version_sensitive  # each CPython's hooks record in the workers

THIS_FILE = os.path.abspath(__file__)


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def task(x):
    return (os.getpid(), fib(12) + sorted([x, 3, 1])[0])  # noqa: FURB192 - a C call to count


def fails_at(x):
    if x == 5:
        raise ValueError("task 5 fails")
    return fib(8)


def fails_after_fib(n):
    fib(n)
    raise ValueError("fails after fib")


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


def setprofile_inside(x):
    """A task that sets its own profile function (as pyinstrument and line
    profilers do): the calls it saw."""
    import sys

    seen = []
    sys.setprofile(lambda frame, event, arg: seen.append(event) if event == "call" else None)
    try:
        fib(5)
    finally:
        sys.setprofile(None)
    return len(seen)


def counts(stats: dict, file: str = THIS_FILE) -> dict:
    return counts_by_name(stats, file)


def calls_from(stats: dict, name: str, caller: str) -> int:
    return c_calls_from(stats, name, THIS_FILE, caller)


def worker_threads(rec: perfkit.Recording) -> dict:
    return {pid: name for name, _tid, pid, _rows in rec.threads() if name.startswith("worker process")}


@pytest.fixture(scope="module")
def parallel():
    with Parallel(n_jobs=2) as p:
        p(delayed(task)(i) for i in range(4))  # workers started and warm
        yield p


def test_worker_calls_are_in_the_profile_as_cprofile_counts_them(parallel):
    items = range(60)
    with perfkit.Profiler() as prof:
        results = parallel(delayed(task)(i) for i in items)
    assert [r[1] for r in results] == [fib(12) + min(i, 1) for i in items]
    prof.create_stats()
    anchor = cprofile_of_tasks(task, items)
    got = counts(prof.stats)
    expected = counts(anchor)
    assert got["task"] == expected["task"] == (60, 60)
    assert got["fib"] == expected["fib"]
    # A C function the tasks call, as cProfile names and counts it.
    sorted_name = "<built-in method builtins.sorted>"
    assert calls_from(prof.stats, sorted_name, "task") == calls_from(anchor, sorted_name, "task") == 60
    # One thread per worker that ran tasks, named after it.
    pids = {r[0] for r in results}
    assert set(worker_threads(prof.recording())) == pids
    assert all(name == f"worker process {pid}" for pid, name in worker_threads(prof.recording()).items())


def test_worker_trees_leave_out_the_workers_own_loop(parallel):
    with perfkit.Profiler() as prof:
        parallel(delayed(task)(i) for i in range(20))
    rec = prof.recording()
    funcs = rec.funcs()
    for name, _tid, _pid, rows in rec.threads():
        if not name.startswith("worker process"):
            continue
        shown = {funcs[f] for f, *_ in rows if f < len(funcs)}
        assert not [k for k in shown if k[0].endswith("_worker.py")]
        assert not [k for k in shown if "run_tasks" in k[2] or "run_packed" in k[2]]
        # The tasks are called from the top of the worker's tree.
        top = {funcs[f][2] for f, parent, *_ in rows[1:] if parent == 0}
        assert "task" in top


def test_profile_file_of_a_reused_pool_sums_calls_per_worker(parallel, tmp_path):
    with perfkit.Profiler() as prof:
        first = parallel(delayed(task)(i) for i in range(30))
        second = list(parallel(delayed(task)(i) for i in range(30, 50)))
    path = tmp_path / "two-calls.prof"
    prof.dump_stats(str(path))
    stats = pstats.Stats(str(path)).stats
    assert counts(stats)["task"] == (50, 50)
    assert counts(stats)["fib"] == counts(cprofile_of_tasks(task, range(50)))["fib"]
    # Two calls, still one tree per worker process.
    names = [n for n, *_ in perfkit.load(str(path)).threads() if n.startswith("worker process")]
    assert sorted(names) == sorted({f"worker process {pid}" for pid, _ in first + second})


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_generators_are_recorded_too(parallel, return_as):
    with perfkit.Profiler() as prof:
        out = list(Parallel(n_jobs=2, return_as=return_as)(delayed(task)(i) for i in range(25)))
    assert len(out) == 25
    prof.create_stats()
    assert counts(prof.stats)["task"] == (25, 25)


@pytest.mark.parametrize(("builtins", "clock"), [(False, "wall"), (True, "cpu"), (False, "cpu")])
def test_workers_record_in_the_callers_mode_and_clock(parallel, builtins, clock):
    with perfkit.Profiler(builtins=builtins, clock=clock) as prof:
        parallel(delayed(task)(i) for i in range(20))
    prof.create_stats()
    assert counts(prof.stats)["task"] == (20, 20)
    assert counts(prof.stats)["fib"] == counts(cprofile_of_tasks(task, range(20)))["fib"]
    rec = prof.recording()
    funcs = rec.funcs()
    for name, _tid, _pid, rows in rec.threads():
        if name.startswith("worker process"):
            has_builtins = any(funcs[f][0] == "~" for f, *_ in rows if f < len(funcs))
            assert has_builtins == builtins


def test_nothing_is_recorded_in_workers_outside_a_recording(parallel):
    parallel(delayed(task)(i) for i in range(10))  # not recording: the workers send no tree
    prof = perfkit.Profiler()
    prof.enable()
    prof.disable()
    parallel(delayed(task)(i) for i in range(10))  # after the recording: nothing added
    with prof:
        sum(range(10))
    assert worker_threads(prof.recording()) == {}


def test_a_failing_call_keeps_a_readable_profile(parallel):
    with perfkit.Profiler() as prof:
        with pytest.raises(ValueError, match="task 5 fails"):
            parallel(delayed(fails_at)(i) for i in range(12))
        after = parallel(delayed(task)(i) for i in range(6))
    assert len(after) == 6
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)  # (takes the profiler's stats, as from cProfile's)
    stats.sort_stats("cumulative").print_stats()
    assert "fails_at" in out.getvalue()
    assert counts(stats.stats)["task"] == (6, 6)


def test_a_tasks_own_profiler_takes_over_in_the_worker(parallel, tmp_path):
    paths = [str(tmp_path / f"task{i}.prof") for i in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot record here" from the task's perfkit.profile
        with perfkit.Profiler() as prof:
            assert parallel(delayed(profiled_inside)(p) for p in paths) == [fib(10)] * 2
    for path in paths:
        # The task's own file holds its work, counted as cProfile counts it.
        assert counts(pstats.Stats(path).stats)["fib"] == counts(cprofile_of_tasks(fib, [10]))["fib"]
    prof.create_stats()
    assert counts(prof.stats)["profiled_inside"] == (2, 2)


def test_threads_backend_has_no_worker_processes():
    with perfkit.Profiler() as prof:
        Parallel(n_jobs=2, backend="threads")(delayed(task)(i) for i in range(10))
    prof.create_stats()
    assert counts(prof.stats)["task"] == (10, 10)
    assert worker_threads(prof.recording()) == {}


def test_perfkit_record_of_a_parallel_script(tmp_path):
    script = tmp_path / "par.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            from perfkit import Parallel, delayed

            def work(n):
                return sum(i * i for i in range(n))

            if __name__ == "__main__":
                if os.environ.get("SEQUENTIAL"):
                    print(sum(work(2000 + i) for i in range(40)))
                else:
                    print(sum(Parallel(n_jobs=2)(delayed(work)(2000 + i) for i in range(40))))
            """
        )
    )
    out = tmp_path / "par.prof"
    done = run_cli("record", "-o", out, script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == sum(sum(i * i for i in range(2000 + k)) for k in range(40))
    # The anchor: cProfile on the same work done in one process.
    anchor = tmp_path / "seq.prof"
    seq = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(anchor), str(script)],
        cwd=tmp_path,
        env={**os.environ, "SEQUENTIAL": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert seq.returncode == 0, seq.stderr
    assert seq.stdout == done.stdout
    got, expected = (
        {(line, name): v[:2] for (f, line, name), v in pstats.Stats(str(p)).stats.items() if f == str(script)}
        for p in (out, anchor)
    )
    assert got[(5, "work")] == expected[(5, "work")] == (40, 40)
    assert got[(6, "<genexpr>")] == expected[(6, "<genexpr>")]  # the generator in work(), run in the workers
    assert len([n for n, *_ in perfkit.load(str(out)).threads() if n.startswith("worker process")]) >= 1


@pytest.mark.parametrize("builtins", [True, False], ids=["full", "python-frames"])
def test_a_task_that_starts_cprofile_runs_as_unprofiled(parallel, builtins):
    # Before: with the caller recording, a task's cProfile.enable() failed the
    # call ("perfkit is profiling this thread" before 3.12, "Another profiling
    # tool is already active" after). The worker's recording gives way.
    unprofiled = parallel(delayed(cprofiled_inside)(i) for i in range(4))
    with perfkit.Profiler(builtins=builtins) as prof:
        profiled = parallel(delayed(cprofiled_inside)(i) for i in range(4))
    assert profiled == unprofiled == [counts(cprofile_of_tasks(fib, [10]))["fib"]] * 4
    prof.create_stats()
    assert counts(prof.stats)["cprofiled_inside"] == (4, 4)
    # The caller's own profiler can still start and stop after.
    with perfkit.Profiler() as again:
        parallel(delayed(task)(i) for i in range(4))
    again.create_stats()
    assert counts(again.stats)["task"] == (4, 4)


def test_a_task_that_sets_its_own_profile_function_runs_as_unprofiled(parallel):
    unprofiled = parallel(delayed(setprofile_inside)(i) for i in range(4))
    with perfkit.Profiler() as prof:
        profiled = parallel(delayed(setprofile_inside)(i) for i in range(4))
    assert profiled == unprofiled
    assert unprofiled[0] >= 15  # fib(5)'s 15 calls at least
    prof.create_stats()
    assert counts(prof.stats)["setprofile_inside"] == (4, 4)


def test_a_batch_that_raises_keeps_the_calls_up_to_its_error(parallel):
    # As cProfile's profile of a loop that raises keeps the calls made up to
    # the exception. Before, a failed batch's tree was not sent.
    with perfkit.Profiler() as prof, pytest.raises(ValueError, match="fails after fib"):
        parallel(delayed(fails_after_fib)(9) for _ in range(1))
    prof.create_stats()

    def anchor_task(n):
        with contextlib.suppress(ValueError):
            fails_after_fib(n)

    anchor = cprofile_of_tasks(anchor_task, [9])
    assert counts(prof.stats)["fails_after_fib"] == counts(anchor)["fails_after_fib"] == (1, 1)
    assert counts(prof.stats)["fib"] == counts(anchor)["fib"]
