"""perfkit.Memory: which function an entry belongs to, what a key is made of,
and joblib's less common API (async functions, validation callbacks, ignore
names), side by side with joblib.Memory where joblib gets it right."""

from __future__ import annotations

import asyncio
import copy
import functools
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import perfkit
import pytest
from perfkit import memory as pk_memory

# Identities and keys rest on code objects, signatures and pickling, which
# differ between interpreters: CI runs this file on each.
pytestmark = pytest.mark.version_sensitive


def run_script(path: Path, *args: str, env=None) -> str:
    out = subprocess.run(
        [sys.executable, str(path), *args], check=False, capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


# -- which function an entry belongs to ----------------------------------------------------------


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_functions_of_two_scripts_are_two_functions(tmp_path, library):
    """One location, two scripts, each with a feature() of the same text
    calling its own helper: each gets its own results, and running them in
    turn recomputes nothing (joblib names a script's module by its path)."""
    location = tmp_path / "cache"
    for name, factor in (("train", 2), ("evaluate", 100)):
        (tmp_path / f"{name}.py").write_text(
            textwrap.dedent(
                f"""
                import sys
                from {library} import Memory

                def helper(x):
                    return x * {factor}

                def feature(x):
                    print("computed", flush=True)
                    return helper(x)

                print(Memory(sys.argv[1], verbose=0).cache(feature)(1))
                """
            )
        )
    runs = [run_script(tmp_path / f"{name}.py", str(location)) for name in ("train", "evaluate") * 2]
    assert [r.split()[-1] for r in runs] == ["2", "100", "2", "100"]
    assert [("computed" in r) for r in runs] == [True, True, False, False]


def test_decorated_functions_of_two_scripts_are_two_functions(tmp_path):
    """As above, with feature() under a decorator of a shared module
    (functools.wraps): a script's module is named by the script that defines
    the function, not by the decorator's file (which named both scripts'
    feature() alike: each run removed the other's entries, or, with one text
    and one helper name, was served the other's result; joblib, which names
    it by the wrapper's file too, returns the first script's result to the
    second)."""
    (tmp_path / "decorators.py").write_text(
        "import functools\n\n"
        "def logged(func):\n"
        "    @functools.wraps(func)\n"
        "    def wrapper(*args, **kwargs):\n"
        "        return func(*args, **kwargs)\n"
        "    return wrapper\n"
    )
    location = tmp_path / "cache"
    for name, factor in (("train", 2), ("evaluate", 100)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.py").write_text(
            textwrap.dedent(
                f"""
                import sys
                sys.path.insert(0, {str(tmp_path)!r})
                from decorators import logged
                from perfkit import Memory

                def helper(x):
                    return x * {factor}

                @logged
                def feature(x):
                    print("computed", flush=True)
                    return helper(x)

                print(Memory(sys.argv[1], verbose=0).cache(feature)(1))
                """
            )
        )
    runs = [run_script(tmp_path / name / "run.py", str(location)) for name in ("train", "evaluate") * 2]
    assert [r.split()[-1] for r in runs] == ["2", "100", "2", "100"]
    assert [("computed" in r) for r in runs] == [True, True, False, False]


def test_a_scripts_module_is_named_as_joblib_names_it():
    name = pk_memory._script_module_name
    assert name("/tmp/x/train.py") == "__main__--tmp-x-train"
    assert name("<stdin>") == name("<string>") == name("?") == "__main__"
    # A notebook's cell: the same name whatever the kernel's process or the cell's run.
    assert name("/tmp/ipykernel_1234/567.py") == name("/tmp/ipykernel_99/567.py")
    assert name("<ipython-input-3-abc>") == name("<ipython-input-7-abc>")
    assert name("<ipython-input-3-abc>") != name("<ipython-input-3-abd>")
    # Where the notebook is known: named by it, whatever the cell (whose digest any edit changes).
    notebook = "/home/me/eda.ipynb"
    assert name("/tmp/ipykernel_12/567.py", notebook) == name("/tmp/ipykernel_99/890.py", notebook)
    assert name("/tmp/ipykernel_12/567.py", notebook) == "__main__--home-me-eda.ipynb"
    assert name("/tmp/ipykernel_12/567.py", notebook) != name("/tmp/ipykernel_12/567.py", "/home/me/b.ipynb")
    assert name("<ipython-input-3-abc>", notebook) == name("<ipython-input-7-abd>", notebook)
    assert name("/tmp/x/train.py", notebook) == "__main__--tmp-x-train"  # (a module %run or imported)
    # A relative path (Jupyter Server's before 2.0.7) is kept: the kernel's current directory does not matter.
    assert name("/tmp/ipykernel_12/567.py", "work/eda.ipynb") == "__main__-work-eda.ipynb"


def test_lambdas_are_each_their_own_function(tmp_path):
    mem = perfkit.Memory(tmp_path, verbose=0)
    calls = []
    # fmt: off
    square = mem.cache(lambda x: x ** 2); cube = mem.cache(lambda x: x ** 3)
    # fmt: on
    double = mem.cache(lambda x: calls.append("double") or 2 * x)
    triple = mem.cache(lambda x: calls.append("triple") or 3 * x)
    # One line, one source text: still two functions (joblib returns 9 for both).
    assert [square(3), cube(3), square(3), cube(3)] == [9, 27, 9, 27]
    # On lines of their own: two functions that keep each other's entries.
    assert [double(5), triple(5), double(5), triple(5)] == [10, 15, 10, 15]
    assert calls == ["double", "triple"]


def test_lambdas_on_one_line_keep_their_entries_across_runs(tmp_path):
    script = tmp_path / "lambdas.py"
    script.write_text(
        "import sys, perfkit\n"
        "mem = perfkit.Memory(sys.argv[1], verbose=0)\n"
        "calls = []\n"
        "f = mem.cache(lambda x: calls.append('f') or x + 1); g = mem.cache(lambda x: calls.append('g') or x * 2)\n"
        "print(f(3), g(3), f(3), g(3), calls)\n"
    )
    runs = [run_script(script, str(tmp_path / "cache")) for _ in range(2)]
    assert runs == ["4 6 4 6 ['f', 'g']\n", "4 6 4 6 []\n"]


class _Scale:
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, x):
        return self.factor * x


def test_two_instances_of_a_callable_class_are_two_functions(tmp_path):
    # helper-46: named by their class, with the instance in no key, Scale(3)
    # returned Scale(2)'s results (joblib: 15).
    mem = perfkit.Memory(tmp_path, verbose=0)
    assert (mem.cache(_Scale(2))(5), mem.cache(_Scale(3))(5), mem.cache(_Scale(2))(5)) == (10, 15, 10)
    assert mem.cache(_Scale(3)).check_call_in_cache(5)
    # ignore=["self"] leaves the instance out, as for a method.
    shared = mem.cache(_Scale(4), ignore=["self"])
    assert shared(1) == 4 and mem.cache(_Scale(5), ignore=["self"])(1) == 4


class _Logged:
    """A decorator class, as people write them (functools.update_wrapper)."""

    def __init__(self, func):
        self._func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args):
        return self._func(*args)


@_Logged
def _logged_square(x):
    _logged_square.runs.append(x)
    return x * x


def test_wrappers_of_a_function_are_that_function_not_an_instance(tmp_path):
    # helper-48: a decorator class's instance (or an lru_cache) went into
    # every key as a callable instance would; its function cannot be pickled
    # by its name, so every call warned and ran uncached.
    mem = perfkit.Memory(tmp_path, verbose=0)
    _logged_square.runs = []
    cached = mem.cache(_logged_square)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [cached(4), cached(4), cached(4)] == [16, 16, 16]
        runs = []
        lru = mem.cache(functools.lru_cache(maxsize=None)(lambda x: runs.append(x) or x * 3))
        assert [lru(3), lru(3)] == [9, 9]
    assert _logged_square.runs == [4] and runs == [3]


DECORATED_SCRIPT = """
import functools, sys
import {library} as lib


class traced:  # a decorator class, as a library may define one
    def __init__(self, func):
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args, **kwargs):
        return self.func(*args, **kwargs)


mem = lib.Memory(sys.argv[1], verbose=0)


@mem.cache
@traced
def feature(x):
    return x + {addend}


print(feature(1))
"""


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_editing_a_function_under_a_decorator_class_invalidates_its_entries(tmp_path, library):
    """The source of a function wrapped by a decorator class is the function's,
    as inspect.getsource gives it: editing its body recomputes, as in joblib.
    perfkit took the decorator's ``__call__`` (the wrapper's source file could
    not be found), which does not change with the function: the old result
    was returned."""
    script = tmp_path / "train.py"
    location = str(tmp_path / "cache")
    script.write_text(DECORATED_SCRIPT.format(library=library, addend=1))
    assert run_script(script, location) == "2\n"
    script.write_text(DECORATED_SCRIPT.format(library=library, addend=2))
    assert run_script(script, location) == "3\n"


def test_numpys_dispatched_functions_keep_their_entries_across_runs(tmp_path):
    """np.linalg.norm, np.unique, ... are dispatchers wrapping a Python function
    (``__wrapped__``): they are that function, named by its source, not by a
    repr that holds an address, new in each process (which made every run a
    miss, and each run's first store remove the last run's entries)."""
    script = tmp_path / "norms.py"
    script.write_text(
        "import sys, numpy as np, perfkit\n"
        "norm = perfkit.Memory(sys.argv[1], verbose=0).cache(np.linalg.norm)\n"
        "print(norm.check_call_in_cache([3.0, 4.0]), norm([3.0, 4.0]))\n"
    )
    location = str(tmp_path / "cache")
    assert run_script(script, location) == "False 5.0\n"
    assert run_script(script, location) == "True 5.0\n"


def test_a_script_with_a_long_path_is_still_cached(tmp_path):
    deep = tmp_path.joinpath(*["a_rather_long_directory_name_" + str(i) for i in range(8)])
    deep.mkdir(parents=True)
    script = deep / "script.py"
    script.write_text(
        "import sys, warnings, perfkit\n"
        "warnings.simplefilter('error')\n"
        "calls = []\n"
        "f = perfkit.Memory(sys.argv[1], verbose=0).cache(lambda x: calls.append(x) or x)\n"
        "f(1); f(1)\n"
        "print(calls)\n"
    )
    assert len(str(script)) > 255
    assert run_script(script, str(tmp_path / "cache")) == "[1]\n"


def test_names_that_differ_in_unusual_characters_keep_their_entries(tmp_path):
    source = "def café(x):\n    return ('café', x)\n\ndef cafè(x):\n    return ('cafè', x)\n"
    namespace: dict = {"__name__": "unusual_names"}
    exec(compile(source, str(tmp_path / "unusual_names.py"), "exec"), namespace)  # noqa: S102
    mem = perfkit.Memory(tmp_path / "cache", verbose=0)
    a, b = mem.cache(namespace["café"]), mem.cache(namespace["cafè"])
    assert (a(1), b(1)) == (("café", 1), ("cafè", 1))
    assert a.func_dir != b.func_dir
    assert (a.check_call_in_cache(1), b.check_call_in_cache(1)) == (True, True)


def test_a_callable_instance_keeps_one_directory_across_runs(tmp_path):
    script = tmp_path / "callable.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import perfkit

            class Scale:
                def __call__(self, x):
                    print("computed", flush=True)
                    return 2 * x

            f = perfkit.Memory(sys.argv[1], verbose=0).cache(Scale())
            print(f(3), f.func_dir)
            """
        )
    )
    first, second = (run_script(script, str(tmp_path / "cache")) for _ in range(2))
    assert "computed" in first and "computed" not in second
    assert first.split()[-1] == second.split()[-1]
    assert "0x" not in first.split()[-1]


# -- what a key is made of -------------------------------------------------------------------------


def test_fortran_and_c_ordered_memoryviews_of_the_same_bytes_differ():
    a = np.arange(6).reshape(2, 3)
    f_order = memoryview(np.asfortranarray(a))
    in_memory_order = np.asfortranarray(a).ravel(order="K")
    c_order = memoryview(in_memory_order.reshape(2, 3))
    assert c_order.c_contiguous and f_order.f_contiguous and not f_order.c_contiguous
    assert in_memory_order.tolist() == [0, 3, 1, 4, 2, 5]  # both views' raw bytes
    assert f_order.tolist() != c_order.tolist()
    assert perfkit.hash(f_order) != perfkit.hash(c_order)
    assert perfkit.hash(f_order) == perfkit.hash(memoryview(a.copy(order="F")))


def test_shared_containers_hash_as_their_copies():
    """Large containers are written as their contents' digest, once per
    object: whether one object is referred to twice or two equal objects
    once each, the hash is the same, and a change anywhere changes it."""
    schema = {f"column{i}": ("float64", i) for i in range(500)}
    shared = [{"id": i, "schema": schema} for i in range(300)]
    copies = [{"id": i, "schema": copy.deepcopy(schema)} for i in range(300)]
    assert perfkit.hash(shared) == perfkit.hash(copies)
    copies[150]["schema"]["column7"] = ("float32", 7)
    assert perfkit.hash(shared) != perfkit.hash(copies)
    row = list(range(100))
    assert perfkit.hash([row, row]) == perfkit.hash([row, list(row)]) != perfkit.hash([row, row[::-1]])
    assert perfkit.hash(tuple(row)) != perfkit.hash(row)
    big_set = set(range(100))
    assert perfkit.hash([big_set, big_set]) == perfkit.hash([big_set, set(big_set)])


def test_deeply_nested_large_containers_hash_as_their_copies():
    # Digests inside digests stop at a depth: each level holds stack frames,
    # and the recursion limit sent deep data to the memo's identity-sensitive
    # fallback at half the depth plain pickling reaches.
    shared_leaf = list(range(64))

    def nest(depth, leaf):
        value = [leaf] + list(range(63))
        for _ in range(depth):
            value = [value] + list(range(63))
        return value

    deep_shared = [nest(300, shared_leaf), nest(300, shared_leaf)]
    deep_copies = [nest(300, list(range(64))), nest(300, list(range(64)))]
    assert perfkit.hash(deep_shared) == perfkit.hash(deep_copies)


def test_a_large_container_that_holds_itself_still_hashes():
    cycle = list(range(100))
    cycle.append(cycle)
    assert perfkit.hash(cycle) == perfkit.hash(cycle)
    holder = {"a": cycle}
    assert perfkit.hash([holder]) == perfkit.hash([holder])


def test_sets_of_frozensets_hash_alike_whatever_the_seed(tmp_path):
    script = tmp_path / "seeds.py"
    script.write_text(
        "import perfkit\n"
        "print(perfkit.hash({frozenset({'a'}), frozenset({'b'}), frozenset({'c'}), frozenset({'d'})}),\n"
        "      perfkit.hash({frozenset({'a'}): 1, frozenset({'b'}): 2, frozenset({'c'}): 3}),\n"
        "      perfkit.hash({(frozenset({t}), 'x') for t in 'abcdefgh'}))\n"
    )
    outputs = {
        run_script(script, env={**os.environ, "PYTHONHASHSEED": str(seed)}) for seed in (0, 1, 2, 3, 4)
    }
    assert len(outputs) == 1


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_a_dict_subclass_built_in_a_seeded_order_hashes_alike_whatever_the_seed(tmp_path, library):
    """A defaultdict (or any dict subclass) filled from a set of strings has a
    different insertion order under each PYTHONHASHSEED, so in each run: it
    is the same dict, and joblib's hash (which writes a dict-like's items
    sorted) is the same in every run, so a cached function taking one is a
    hit from run to run. perfkit's sorted exact dicts only, so such a call
    was a miss in every new process."""
    script = tmp_path / "seeds.py"
    script.write_text(
        f"import collections, {library}\n"
        "class Scores(dict):\n"
        "    pass\n"
        "words = {'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta'}\n"
        "counts = collections.defaultdict(int)\n"
        "scores = Scores()\n"
        "for w in words:\n"
        "    counts[w] += len(w)\n"
        "    scores[w] = len(w)\n"
        "print(list(counts)[:2], " + library + ".hash(counts), " + library + ".hash(scores))\n"
    )
    outputs = [run_script(script, env={**os.environ, "PYTHONHASHSEED": str(seed)}) for seed in range(6)]
    assert len({o.split("]")[0] for o in outputs}) > 1, "the seeds should give several insertion orders"
    assert len({o.split("]")[1] for o in outputs}) == 1


# -- joblib's API: validation, async functions, ignore ---------------------------------------------


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_validation_callback_also_decides_check_and_shelve(tmp_path, library):
    lib = perfkit if library == "perfkit" else joblib
    mem = lib.Memory(str(tmp_path), verbose=0)
    calls = []

    def f(x):
        calls.append(x)
        return (x, len(calls))

    never = mem.cache(f, cache_validation_callback=lambda metadata: False)
    assert never(1) == (1, 1)
    assert never.check_call_in_cache(1) is False
    assert never.call_and_shelve(1).get() == (1, 2)
    fresh = mem.cache(f, cache_validation_callback=lib.expires_after(hours=1))
    assert fresh.check_call_in_cache(1) is True
    assert fresh(1) == (1, 2)
    expired = mem.cache(f, cache_validation_callback=lib.expires_after(seconds=0))
    assert expired.check_call_in_cache(1) is False


def test_expires_after_recomputes_old_results(tmp_path):
    mem = perfkit.Memory(tmp_path, verbose=0)
    calls = []
    f = mem.cache(
        lambda x: calls.append(x) or x, cache_validation_callback=perfkit.expires_after(seconds=0.5)
    )
    f(1), f(1)
    assert calls == [1]
    time.sleep(0.6)
    f(1)
    assert calls == [1, 1]


async def _fetch(x):
    await asyncio.sleep(0)
    _fetch.calls.append(x)
    return {"x": x, "squared": x * x}


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_async_functions_cache_their_awaited_result(tmp_path, library):
    lib = perfkit if library == "perfkit" else joblib
    _fetch.calls = []
    fetch = lib.Memory(str(tmp_path), verbose=0).cache(_fetch)

    async def main():
        first, second = await fetch(3), await fetch(3)
        shelved = await fetch.call_and_shelve(4)
        return first, second, shelved.get(), await fetch.call(3)

    first, second, shelved, (called, metadata) = asyncio.run(main())
    assert first == second == called == {"x": 3, "squared": 9}
    assert shelved == {"x": 4, "squared": 16}
    assert _fetch.calls == [3, 4, 3]
    assert metadata["duration"] >= 0
    assert fetch.check_call_in_cache(3) and not fetch.check_call_in_cache(5)


def test_async_functions_without_a_location(tmp_path):
    _fetch.calls = []
    fetch = perfkit.Memory(None).cache(_fetch)

    async def main():
        return await fetch(2), (await fetch.call_and_shelve(2)).get(), await fetch.call(2)

    assert asyncio.run(main()) == ({"x": 2, "squared": 4},) * 2 + (({"x": 2, "squared": 4}, {}),)
    assert _fetch.calls == [2, 2, 2]


class _Model:
    @classmethod
    def fit(cls, data, seed):
        _Model.calls.append(seed)
        return sum(data)


def _with_extras(a, *args, **kwargs):
    _with_extras.calls.append((args, kwargs))
    return a


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_ignore_names_joblib_accepts(tmp_path, library):
    lib = perfkit if library == "perfkit" else joblib
    mem = lib.Memory(str(tmp_path), verbose=0)
    _Model.calls, _with_extras.calls = [], []
    fit = mem.cache(_Model.fit, ignore=["cls", "seed"])
    assert (fit([1, 2], seed=1), fit([1, 2], seed=2)) == (3, 3)
    assert _Model.calls == [1]
    extras = mem.cache(_with_extras, ignore=["*", "**"])
    assert (extras(1, 2, k=3), extras(1, 4, k=5), extras(2)) == (1, 1, 2)
    assert _with_extras.calls == [((2,), {"k": 3}), ((), {})]


# -- entries read while others replace them --------------------------------------------------------


def test_a_mapped_read_maps_the_version_whose_head_it_read(tmp_path, monkeypatch):
    """Another process replaces the entry between the head's read and the
    mapping (an entry recomputed by call()): the result is the version whose
    head was read, never its pickle stream over the other's buffers."""
    mem = perfkit.Memory(tmp_path, mmap_mode="r", verbose=0)
    version = [0]

    def make(n):
        version[0] += 1
        # Each version lays its buffers out differently (another stream length).
        return {"meta": "v" * (10_000 * version[0]), "data": np.full(n, version[0], dtype=np.int64)}

    f = mem.cache(make)
    f(50_000)
    real_head = pk_memory._cache_load_head
    replaced = []

    def head_then_replace(entry, *args):
        r = real_head(entry, *args)
        if not replaced:
            replaced.append(True)
            f.call(50_000)  # version 2 published under the same name
            pk_memory._native.cache_wait(entry)  # (on disk, not left to the background writer)
        return r

    monkeypatch.setattr(pk_memory, "_cache_load_head", head_then_replace)
    out = f(50_000)
    assert replaced
    assert out["meta"] == "v" * 10_000 and np.all(out["data"] == 1)
    monkeypatch.setattr(pk_memory, "_cache_load_head", real_head)
    again = f(50_000)
    assert again["meta"] == "v" * 20_000 and np.all(again["data"] == 2)


def _identity(x):
    return x


def test_writes_through_r_plus_are_seen_at_once_by_plain_reads(tmp_path):
    writer = perfkit.Memory(tmp_path, mmap_mode="r+", verbose=0).cache(_identity)
    reader = perfkit.Memory(tmp_path, verbose=0).cache(_identity)
    writer(np.zeros(4))
    mapped = writer(np.zeros(4))
    seen = []
    for value in (1.0, 2.0, 3.0):  # the second write to a page already dirty changes no file time
        mapped[0] = value
        seen.append(float(reader(np.zeros(4))[0]))
    assert seen == [1.0, 2.0, 3.0]


def test_a_relative_location_stays_where_it_was_after_a_chdir(tmp_path, monkeypatch):
    # helper-47: entries queued for the background writer were written
    # relative to the directory of the moment (a notebook's %cd): most of a
    # thousand misses landed in another cache.
    monkeypatch.chdir(tmp_path)
    mem = perfkit.Memory("cache", verbose=0)
    f = mem.cache(_identity)
    for i in range(300):
        f(i)
    (tmp_path / "sub").mkdir()
    os.chdir(tmp_path / "sub")
    pk_memory._flush_writes()
    assert len(list((tmp_path / "cache").rglob("*.pkc"))) == 300
    assert not (tmp_path / "sub" / "cache").exists()
    assert all(f.check_call_in_cache(i) for i in range(300))


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_a_location_under_the_home_directory_is_there_as_in_joblib(tmp_path, monkeypatch, library):
    """``Memory("~/.cache/project")`` is in the home directory: joblib expands
    the ``~``. perfkit took it as a directory named ``~`` in the current one,
    so the cache moved with the working directory (a miss from elsewhere)."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    mem = (perfkit if library == "perfkit" else joblib).Memory("~/cache", verbose=0)
    f = mem.cache(_identity)
    f(1)
    if library == "perfkit":
        pk_memory._flush_writes()
    assert (home / "cache").is_dir()
    assert list(elsewhere.iterdir()) == []
    monkeypatch.chdir(home)
    assert f.check_call_in_cache(1)
