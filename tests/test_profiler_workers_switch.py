"""The switch that keeps a profile out of perfkit.Parallel's workers:
``Profiler(workers=False)``, ``perfkit.profile(workers=False)``,
``perfkit record --no-workers``.

With it, the caller's profile is the caller's alone, as cProfile's is: no
"worker process" thread, the same counts as cProfile of the same call, and
the workers are not asked to record (a task sees no recording in its
process, no reply carries a tree). The default still records them.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import subprocess
import sys
import textwrap

import perfkit
import pytest
from conftest import run_cli
from perfkit import Parallel, _native, delayed

pytestmark = pytest.mark.version_sensitive  # each CPython's hooks record in the workers

THIS_FILE = os.path.abspath(__file__)


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def task(x):
    """(whether the worker recorded this task for the caller, a result)"""
    return (_native.recording_now() is not None, fib(10) + x)


def in_parallel(par, items):
    return par(delayed(task)(i) for i in items)


def counts(stats: dict, file: str = THIS_FILE) -> dict:
    """{(line, function name): (primitive calls, all calls)} of a pstats dict, for `file`'s functions."""
    return {(line, name): (cc, nc) for (f, line, name), (cc, nc, *_rest) in stats.items() if f == file}


def names(stats: dict) -> set:
    return {name for _line, name in counts(stats)}


def worker_threads(rec: perfkit.Recording) -> list:
    return [name for name, *_ in rec.threads() if name.startswith("worker process")]


def cprofile_of_caller(func, *args) -> dict:
    """cProfile's stats of func(*args) in this process: it does not see the workers."""
    prof = cProfile.Profile()
    prof.enable()
    func(*args)
    prof.disable()
    prof.create_stats()
    return prof.stats


@pytest.fixture(scope="module")
def parallel():
    with Parallel(n_jobs=2) as p:
        p(delayed(task)(i) for i in range(4))  # workers started and warm
        yield p


def test_recording_now_is_none_in_a_recording_without_workers():
    with perfkit.Profiler(workers=False):
        inside = _native.recording_now()
    with perfkit.Profiler(builtins=False, clock="cpu"):
        default = _native.recording_now()
    assert inside is None
    assert default == (False, "cpu")
    # (enable(builtins=...) makes a new recording: it keeps the switch)
    prof = perfkit.Profiler(workers=False)
    prof.enable(builtins=False)
    try:
        switched = _native.recording_now()
    finally:
        prof.disable()
    assert switched is None


def test_profiler_without_workers_records_the_caller_alone_as_cprofile_does(parallel):
    items = range(40)
    anchor = cprofile_of_caller(in_parallel, parallel, items)
    with perfkit.Profiler(workers=False) as prof:
        results = in_parallel(parallel, items)
    assert [r[1] for r in results] == [fib(10) + i for i in items]
    assert not any(seen for seen, _ in results)  # no worker recorded a task
    assert worker_threads(prof.recording()) == []
    prof.create_stats()
    got = counts(prof.stats)
    assert got == counts(anchor)
    assert "in_parallel" in names(prof.stats)
    assert not {"task", "fib"} & names(prof.stats)


def test_the_default_still_records_the_workers(parallel):
    items = range(20)
    with perfkit.Profiler() as prof:
        results = in_parallel(parallel, items)
    assert all(seen for seen, _ in results)
    assert worker_threads(prof.recording())
    prof.create_stats()
    assert {"task", "fib"} <= names(prof.stats)


def test_profile_without_workers(parallel, tmp_path):
    path = tmp_path / "caller.prof"
    with perfkit.profile(path, workers=False):
        results = in_parallel(parallel, range(10))
    assert not any(seen for seen, _ in results)
    assert worker_threads(perfkit.load(str(path))) == []
    assert not {"task", "fib"} & names(pstats.Stats(str(path)).stats)

    @perfkit.profile(workers=False)
    def decorated():
        return in_parallel(parallel, range(10))

    assert not any(seen for seen, _ in decorated())
    assert worker_threads(decorated.profiler.recording()) == []


def test_a_reused_parallel_follows_each_recordings_switch(parallel):
    # One pool, one recording after another with a different switch: each
    # call's workers record, or not, as the recording then says.
    with perfkit.Profiler(workers=False) as off:
        first = in_parallel(parallel, range(8))
    with perfkit.Profiler() as on:
        second = in_parallel(parallel, range(8))
    with perfkit.Profiler(workers=False) as off_again:
        third = in_parallel(parallel, range(8))
    assert [seen for seen, _ in first + second + third] == [False] * 8 + [True] * 8 + [False] * 8
    assert worker_threads(off.recording()) == worker_threads(off_again.recording()) == []
    assert worker_threads(on.recording())


@pytest.mark.parametrize("made_in", ["workers", "no workers"])
def test_a_generator_drawn_in_a_recording_with_the_other_switch(made_in):
    # A generator's first batches go out when it is made, the rest as it is
    # drawn: those follow the recording in which they are sent (the caller
    # resends the call's frame when recording_now() changes), and a batch
    # recorded for the first recording is not taken into the second.
    n = 60
    first_on = made_in == "workers"
    with Parallel(n_jobs=2, return_as="generator", batch_size=1) as par:
        with perfkit.Profiler(workers=first_on) as first:
            gen = in_parallel(par, range(n))
            made = par.n_dispatched_tasks
        assert 0 < made < n
        with perfkit.Profiler(workers=not first_on) as second:
            out = list(gen)
    assert [r[1] for r in out] == [fib(10) + i for i in range(n)]
    seen = [s for s, _ in out]
    assert seen[:made] == [first_on] * made
    assert seen[made:] == [not first_on] * (n - made)
    assert worker_threads(first.recording()) == []  # its batches' replies came after it
    second.create_stats()
    if first_on:
        # The trees of the batches recorded for the first recording arrived
        # in the second, which records no workers: left out.
        assert worker_threads(second.recording()) == []
        assert not {"task", "fib"} & names(second.stats)
    else:
        assert worker_threads(second.recording())
        assert counts(second.stats)[(task.__code__.co_firstlineno, "task")] == (n - made, n - made)


def test_perfkit_record_no_workers(tmp_path):
    script = tmp_path / "par.py"
    script.write_text(
        textwrap.dedent(
            """
            from perfkit import Parallel, delayed

            def work(n):
                return sum(i * i for i in range(n))

            def main():
                return sum(Parallel(n_jobs=2)(delayed(work)(2000 + i) for i in range(40)))

            if __name__ == "__main__":
                print(main())
            """
        )
    )
    expected_out = sum(sum(i * i for i in range(2000 + k)) for k in range(40))
    off, on = tmp_path / "off.prof", tmp_path / "on.prof"
    for out, flags in ((off, ["--no-workers"]), (on, [])):
        done = run_cli("record", *flags, "-o", out, script, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert int(done.stdout) == expected_out
    # The anchor: cProfile of the same program, which sees the caller alone.
    anchor = tmp_path / "cprofile.prof"
    cp = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(anchor), str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert cp.returncode == 0, cp.stderr
    got, expected, recorded = (counts(pstats.Stats(str(p)).stats, str(script)) for p in (off, anchor, on))
    assert got == expected
    assert (7, "main") in got
    assert (4, "work") not in got
    assert worker_threads(perfkit.load(str(off))) == []
    # Without the flag the workers' calls are in it.
    assert recorded[(4, "work")] == (40, 40)
    assert worker_threads(perfkit.load(str(on)))
