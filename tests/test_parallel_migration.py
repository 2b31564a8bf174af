"""Programs written for joblib, run with perfkit's import instead: the same
results, errors and costs, side by side with joblib."""

from __future__ import annotations

import operator
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import perfkit.parallel as pp
import pytest
from perfkit import Parallel, delayed

sys.path.insert(0, str(Path(__file__).parent))
import parallel_tasks as T


@pytest.mark.parametrize("remote_read", [True, False])
def test_tiny_tasks_sharing_one_large_array_go_in_growing_batches(batch_sizes, monkeypatch, remote_read):
    # A cross-validation loop's idiom: every task gets the whole data set and
    # an index. joblib memmaps the array once for the call; each perfkit batch
    # sends it once, so batches must grow with the tasks' cost as for any
    # tiny task. An array over the 8 MB batch limit was counted as every
    # task's own bytes: each batch held one task, 2,000 copies of 16 MB
    # (1.8 s against joblib's 0.2).
    monkeypatch.setattr(pp, "_remote_read_allowed", remote_read)
    pp._shutdown_shared_pool()
    data = np.random.default_rng(0).random(2_000_000)  # 16 MB
    n = 2000
    expected = joblib.Parallel(n_jobs=2)(joblib.delayed(T.item_of)(data, i) for i in range(n))
    try:
        assert Parallel(n_jobs=2)(delayed(T.item_of)(data, i) for i in range(n)) == expected
    finally:
        pp._shutdown_shared_pool()
    assert len(batch_sizes) < 60, batch_sizes


def test_tiny_tasks_sharing_one_strided_view_go_in_growing_batches(batch_sizes):
    # The same with a view of the data (a column, every other row, X[::2]),
    # which numpy pickles by copying its bytes into the pickle itself: 8 MB
    # of pickle a batch, 20 ms to make, so each batch held one task, and
    # 2,000 tasks took 53 s against joblib's 0.2 (joblib memmaps the view once).
    data = np.random.default_rng(0).random((1_000_000, 2))[:, 0]
    assert not data.flags.c_contiguous and data.nbytes == 8_000_000
    n = 300
    expected = joblib.Parallel(n_jobs=2)(joblib.delayed(T.item_of)(data, i) for i in range(n))
    out = Parallel(n_jobs=2)(delayed(T.item_of)(data, i) for i in range(n))
    assert out == expected
    assert len(batch_sizes) < 30, batch_sizes
    # A view given once per task is still each task's own (a copy each).
    rows = [data[i : i + 100_000] for i in range(8)]
    assert Parallel(n_jobs=2)(delayed(T.array_sum)(r) for r in rows) == [float(r.sum()) for r in rows]


def run_both(tmp_path, source):
    """Runs the script `source` once importing from joblib and once from
    perfkit (its `LIB` line says which): (joblib's run, perfkit's run)."""
    runs = []
    for lib in ("joblib", "perfkit"):
        path = tmp_path / f"with_{lib}.py"
        path.write_text(textwrap.dedent(source).replace("LIB", lib))
        runs.append(
            subprocess.run(
                [sys.executable, str(path)], check=False, capture_output=True, text=True, timeout=120
            )
        )
    return runs


def test_a_scripts_typing_namedtuple_travels_as_argument_and_result(tmp_path):
    # A script's typing.NamedTuple went to the workers by cloudpickle with
    # its __slots__ given to the class statement, which NamedTuple refuses
    # ("Cannot overwrite NamedTuple attribute __slots__"): every call that
    # passed one failed, where joblib's ran.
    joblib_run, perfkit_run = run_both(
        tmp_path,
        """
        import collections, typing
        from LIB import Parallel, delayed

        class Point(typing.NamedTuple):
            x: int
            y: float = 0.0

        Pair = collections.namedtuple("Pair", "a b")

        def moved(p, pair):
            return Point(p.x + 1, p.y), Pair(pair.b, pair.a)

        def made(i):
            return Point(i), Pair(i, -i)

        if __name__ == "__main__":
            args = [(Point(i, i / 2), Pair(i, 0)) for i in range(4)]
            out = Parallel(n_jobs=2)(delayed(moved)(*a) for a in args)
            print(out, type(out[0][0]) is Point, type(out[0][1]) is Pair)
            out = Parallel(n_jobs=2)(delayed(made)(i) for i in range(4))
            print(out, type(out[0][0]) is Point, type(out[0][1]) is Pair)
        """,
    )
    assert joblib_run.returncode == 0, joblib_run.stderr
    assert perfkit_run.returncode == 0, perfkit_run.stderr[-3000:]
    assert perfkit_run.stdout == joblib_run.stdout
    assert perfkit_run.stdout.count("True True") == 2


def test_a_script_class_that_cannot_be_made_in_a_worker_is_the_error_shown(tmp_path):
    # When what the call sends of the script (its classes, with its
    # functions) cannot be rebuilt in a worker, the error said only that the
    # arguments named a class the worker lacked ("Can't get attribute 'Job'
    # on <module '__main__'>"). joblib's error has the real one as its cause.
    joblib_run, perfkit_run = run_both(
        tmp_path,
        """
        import os
        from LIB import Parallel, delayed

        PARENT = os.getpid()

        class Meta(type):
            def __new__(mcls, name, bases, ns, **kw):
                if os.getpid() != PARENT:
                    raise RuntimeError("Meta classes are made in the caller only")
                return super().__new__(mcls, name, bases, ns, **kw)

        class Job(metaclass=Meta):
            pass

        def run(job):
            return 1

        if __name__ == "__main__":
            try:
                Parallel(n_jobs=2)(delayed(run)(Job()) for _ in range(2))
            except Exception as e:
                cause = [line for line in str(e.__cause__).splitlines() if "Error: " in line]
                print(type(e).__name__, "|", e, "|", cause[-1])
        """,
    )
    why = "RuntimeError: Meta classes are made in the caller only"
    assert joblib_run.stdout.startswith("BrokenProcessPool") and joblib_run.stdout.strip().endswith(why)
    assert perfkit_run.stdout.strip() == f"RuntimeError | Meta classes are made in the caller only | {why}"


def test_tiny_tasks_sharing_one_large_python_object_go_in_growing_batches(batch_sizes):
    # A lookup table of Python objects every task gets (a vocabulary, a list
    # of names) is pickled into each batch, in band, once whatever the
    # batch's size; its cost, here and in the worker that unpickles it, was
    # taken as every task's own, so each batch held one task and pickled it
    # again: 400 tasks on a list of 200,000 names took 13.6 s against
    # joblib's 1.7.
    table = [f"name{i}" for i in range(150_000)]
    n = 200
    expected = joblib.Parallel(n_jobs=2)(joblib.delayed(operator.getitem)(table, i) for i in range(n))
    assert Parallel(n_jobs=2)(delayed(operator.getitem)(table, i) for i in range(n)) == expected
    assert len(batch_sizes) < 40, batch_sizes


def test_a_scripts_cached_functions_run_in_the_workers(tmp_path):
    # A script's @functools.cache / @lru_cache function pickles by reference
    # (the C wrapper's own way), and a worker has no such __main__ name:
    # every call given one, or a function whose globals name one, failed
    # with "Can't get attribute 'fib' on <module '__main__'>" (joblib's
    # fail too, BrokenProcessPool). Each worker now has its own cache of it,
    # as a forked Pool's, whose children inherit the script, do.
    script = tmp_path / "cached.py"
    script.write_text(
        textwrap.dedent(
            """
            import functools, os
            from perfkit import Parallel, delayed

            @functools.lru_cache(maxsize=128, typed=True)
            def fib(n):
                return n if n < 2 else fib(n - 1) + fib(n - 2)

            @functools.cache
            def square(n):
                return n * n

            def uses_them(n):
                return fib(n) + square(n)

            def how_cached(n):
                fib(n)
                # The recursion went through this worker's one cache: its
                # global is the wrapper that was called.
                return (
                    fib.cache_info().hits > 0,
                    fib.__wrapped__.__globals__["fib"] is fib,
                    sorted(fib.cache_parameters().items()) == [("maxsize", 128), ("typed", True)],
                )

            if __name__ == "__main__":
                expected = [uses_them(n) for n in range(40)]
                fib.cache_clear(); square.cache_clear()
                for f in (uses_them, functools.partial(uses_them)):
                    assert Parallel(n_jobs=2)(delayed(f)(n) for n in range(40)) == expected
                assert Parallel(n_jobs=2)(delayed(fib)(n) for n in range(40)) == [fib(n) for n in range(40)]
                print(set(Parallel(n_jobs=2)(delayed(how_cached)(n) for n in range(20, 24))))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "{(True, True, True)}"
