"""perfkit.Memory and perfkit.hash, side by side with joblib.Memory and joblib.hash."""

from __future__ import annotations

import datetime
import functools
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import perfkit
import pytest
from perfkit.memory import CacheWarning, MemorizedFunc, MemorizedResult, NotMemorizedFunc

# Hashing relies on pickle and code-object details and binding on signature
# introspection, which differ between interpreters: CI runs this file on each.
pytestmark = pytest.mark.version_sensitive


def entries(location) -> list[Path]:
    return sorted(Path(location, "perfkit").rglob("*.pkc"))


def counted(memory, func, **kw):
    """memory.cache(func) whose ``.calls`` records each real call (the wrapper keeps
    func's name, module and, through __wrapped__, its signature)."""
    calls = []

    @functools.wraps(func)
    def recording(*a, **k):
        calls.append((a, k))
        return func(*a, **k)

    cached = memory.cache(recording, **kw)
    cached.calls = calls
    return cached


# -- the API, against joblib -----------------------------------------------------------------


def _add(x, y=2, *, z=3):
    return x * y + z


@pytest.mark.parametrize("impl", ["perfkit", "joblib"])
def test_same_semantics_as_joblib(tmp_path, impl):
    """Each scenario is run on joblib.Memory and perfkit.Memory: the observable calls must agree."""
    Mem = perfkit.Memory if impl == "perfkit" else joblib.Memory
    mem = Mem(str(tmp_path / impl), verbose=0)
    f = counted(mem, _add)
    assert f(1) == 5
    assert f(1) == 5
    assert f(1, 2) == 5  # default passed explicitly
    assert f(x=1, z=3) == 5  # as keywords
    assert f(1, 2, z=3) == 5
    assert len(f.calls) == 1
    assert f(2) == 7 and f(1, y=3) == 6 and f(1, z=4) == 6
    assert len(f.calls) == 4
    assert f.check_call_in_cache(1) and f.check_call_in_cache(1, 2)
    assert not f.check_call_in_cache(9)
    out, meta = f.call(1)  # always runs
    assert out == 5 and len(f.calls) == 5 and "duration" in meta
    shelved = f.call_and_shelve(9)
    assert shelved.get() == 21 and len(f.calls) == 6
    shelved2 = f.call_and_shelve(9)
    assert shelved2.get() == 21 and len(f.calls) == 6
    shelved2.clear()
    assert not f.check_call_in_cache(9)
    f.clear(warn=False)
    assert not f.check_call_in_cache(1)
    f(1)
    assert len(f.calls) == 7
    mem.clear(warn=False)
    f(1)
    assert len(f.calls) == 8


@pytest.mark.parametrize("impl", ["perfkit", "joblib"])
def test_ignore_and_decorator_forms(tmp_path, impl):
    Mem = perfkit.Memory if impl == "perfkit" else joblib.Memory
    mem = Mem(str(tmp_path), verbose=0)
    calls = []

    @mem.cache(ignore=["verbose"])
    def g(x, verbose=False):
        calls.append(x)
        return -x

    assert g(3) == -3 and g(3, verbose=True) == -3 and g(3, True) == -3
    assert calls == [3]

    @mem.cache
    def h(x):
        calls.append(("h", x))
        return x

    h(1), h(1)
    assert calls == [3, ("h", 1)]
    h2 = mem.cache(lambda x: x + 1)
    assert h2(1) == 2 and h2(1) == 2
    assert mem.eval(_add, 4) == 11


def test_ignore_unknown_argument_is_an_error(tmp_path):
    mem = perfkit.Memory(tmp_path)
    with pytest.raises(ValueError, match="'nope'.*not an argument of _add"):
        mem.cache(_add, ignore=["nope"])


def test_wrong_call_raises_the_functions_own_error(tmp_path):
    mem = perfkit.Memory(tmp_path)
    f = mem.cache(_add)
    with pytest.raises(TypeError, match="_add"):
        f()
    with pytest.raises(TypeError):
        f(1, 2, 3)
    assert entries(tmp_path) == []


def test_exceptions_are_not_cached(tmp_path):
    mem = perfkit.Memory(tmp_path)
    n = []

    @mem.cache
    def boom(x):
        n.append(x)
        raise KeyError(x)

    for _ in range(2):
        with pytest.raises(KeyError):
            boom(1)
    assert n == [1, 1] and entries(tmp_path) == []


def test_location_none_does_not_cache(tmp_path):
    mem = perfkit.Memory(None)
    calls = []

    @mem.cache
    def f(x):
        calls.append(x)
        return x * 2

    assert isinstance(f, NotMemorizedFunc)
    assert f(2) == 4 and f(2) == 4 and calls == [2, 2]
    assert f.call(2) == (4, {})
    assert not f.check_call_in_cache(2)
    assert f.call_and_shelve(3).get() == 6
    f.clear()
    mem.clear()
    mem.reduce_size(items_limit=0)


def test_positional_only_varargs_and_kwargs(tmp_path):
    mem = perfkit.Memory(tmp_path)
    calls = []

    def k(a, /, b=1, *rest, c, d=4, **extra):
        calls.append(1)
        return (a, b, rest, c, d, sorted(extra.items()))

    kc = mem.cache(k)
    assert kc(1, c=3) == k(1, c=3)
    assert kc(1, 1, c=3, d=4) == k(1, c=3)
    assert len(calls) == 3  # k's own two calls + one cached miss
    assert kc(1, 2, 5, 6, c=3, x=1, y=2) == kc(1, 2, 5, 6, c=3, y=2, x=1)
    assert len(calls) == 4  # one miss, then a hit: **extra's order does not matter


def test_metadata_is_human_readable(tmp_path):
    mem = perfkit.Memory(tmp_path)
    f = mem.cache(_add)
    _out, meta = f.call(3, z=1)
    [entry] = entries(tmp_path)
    first_line = entry.read_bytes().split(b"\n", 1)[0]
    import json

    stored = json.loads(first_line)
    assert stored["function"] == f"{__name__}._add"
    assert stored["input_args"] == {"x": "3", "y": "2", "z": "1"}
    assert stored["duration"] >= 0 and stored["output_bytes"] > 0
    assert meta["input_args"] == stored["input_args"]
    code = (entry.parent.parent / "func_code.py").read_text()
    assert "def _add(x, y=2, *, z=3):" in code


def test_editing_the_function_invalidates_its_entries(tmp_path):
    """The same module and name with a new body: recomputed, and the old entries are removed."""
    mem = perfkit.Memory(tmp_path)
    results = []
    for body in ("return x + 1", "return x + 100", "return x + 100"):
        ns: dict = {"__name__": "edited_module"}
        exec(compile(f"def step(x):\n    {body}\n", "<edited>", "exec"), ns)  # noqa: S102
        step = mem.cache(ns["step"])
        results.append(step(1))
        assert len(entries(tmp_path)) == 1
    assert results == [2, 101, 101]
    # A recompile of identical code hits (third round): still one entry, one code directory.
    assert len(list((tmp_path / "perfkit" / "edited_module" / "step").iterdir())) == 1


def test_call_and_shelve_result_is_picklable_reference(tmp_path):
    mem = perfkit.Memory(tmp_path)
    f = mem.cache(_add)
    res = f.call_and_shelve(5)
    assert isinstance(res, MemorizedResult)
    again = pickle.loads(pickle.dumps(res))
    assert again.get() == 13
    res.clear()
    with pytest.raises(KeyError, match="no longer in the cache"):
        again.get()


def _nap(seconds):
    time.sleep(seconds)
    return seconds


@pytest.mark.parametrize("impl", ["perfkit", "joblib"])
def test_shelved_result_tells_how_long_the_call_took(tmp_path, impl):
    # joblib's MemorizedResult has .duration (the call's, from its metadata):
    # code reading it failed with AttributeError on perfkit's.
    Mem = perfkit.Memory if impl == "perfkit" else joblib.Memory
    nap = Mem(tmp_path, verbose=0).cache(_nap)
    first = nap.call_and_shelve(0.2)
    again = nap.call_and_shelve(0.2)  # a hit: the same entry, the same duration
    assert 0.2 <= first.duration < 5
    assert again.duration == first.duration == first.metadata["duration"]
    assert pickle.loads(pickle.dumps(again)).duration == first.duration


def test_memorized_func_pickles(tmp_path):
    mem = perfkit.Memory(tmp_path)
    f = mem.cache(_add)
    g = pickle.loads(pickle.dumps(f))
    assert isinstance(g, MemorizedFunc) and g(1) == 5 and f.check_call_in_cache(1)
    assert pickle.loads(pickle.dumps(mem)).location == mem.location


# -- results: numpy, pandas, mmap, compression ---------------------------------------------------


def test_numpy_results_round_trip_exactly(tmp_path):
    mem = perfkit.Memory(tmp_path)

    @mem.cache
    def make(kind):
        rng = np.random.default_rng(0)
        base = rng.standard_normal((37, 5))
        return {
            "c": base,
            "f": np.asfortranarray(base),
            "i": np.arange(10, dtype=np.int16),
            "rec": np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
            "obj": np.array(["x", None], dtype=object),
            "view": base[::2, 1],
            "empty": np.empty((0, 3)),
            "df": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
            "kind": kind,
        }

    first = make("k")
    second = make("k")
    for key, v in first.items():
        w = second[key]
        if isinstance(v, np.ndarray):
            assert w.dtype == v.dtype and w.shape == v.shape
            if v.flags.c_contiguous or v.flags.f_contiguous:
                assert (w.flags.c_contiguous, w.flags.f_contiguous) == (
                    v.flags.c_contiguous,
                    v.flags.f_contiguous,
                )
            np.testing.assert_array_equal(w, v)
            assert w.flags.writeable
        elif isinstance(v, pd.DataFrame):
            pd.testing.assert_frame_equal(w, v)
        else:
            assert w == v


def test_mmap_mode_maps_arrays_instead_of_reading(tmp_path):
    mem = perfkit.Memory(tmp_path, mmap_mode="r")
    calls = []

    @mem.cache
    def big(n):
        calls.append(n)
        return {"a": np.arange(n, dtype=np.float64), "b": np.ones((3, 4), order="F"), "n": n}

    first = big(200_000)
    second = big(200_000)
    assert calls == [200_000]
    for out in (first, second):  # as joblib, the first call returns the mapped result too
        a = out["a"]
        np.testing.assert_array_equal(a, np.arange(200_000, dtype=np.float64))
        assert not a.flags.writeable
        base = a
        while getattr(base, "base", None) is not None:
            base = base.base
        assert isinstance(base, __import__("mmap").mmap)
        assert out["b"].flags.f_contiguous and out["n"] == 200_000

    copy_mem = perfkit.Memory(tmp_path, mmap_mode="c")
    a = copy_mem.cache(big.__wrapped__)(200_000)["a"]
    a[0] = -1.0  # copy-on-write: the cache is untouched
    np.testing.assert_array_equal(big(200_000)["a"][:2], [0.0, 1.0])


def _ones(n):
    return np.ones(n)


def _arrays(n):
    read_only = np.arange(5_000.0)
    read_only.flags.writeable = False
    return {
        "a": np.arange(n, dtype=np.float64),
        "f": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "t": np.arange(24.0).reshape(2, 3, 4).transpose(2, 0, 1),  # dense, neither C nor F
        "0d": np.array(7.5),
        "ro": read_only,  # (stored read-only: pickle wraps its buffer)
        "i8": np.arange(10, dtype=np.int8),
    }


def _values(a):
    return a.tolist(), type(a).__name__


def _pickled_out_of_band(a) -> bool:
    buffers: list = []
    pickle.dumps(a, protocol=5, buffer_callback=buffers.append)
    return bool(buffers)


@pytest.mark.parametrize("mmap_mode", ["r", "r+", "c"])
@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_mmap_mode_returns_np_memmaps_as_joblib_does(tmp_path, library, mmap_mode):
    """With mmap_mode, a result's arrays are np.memmap objects, on the first
    call too, as joblib returns them: filename, mode, flush(). (perfkit
    returned plain read-only ndarrays: no flush() after changing an "r+"
    result.) Parallel's workers get them by file and see their values."""
    import mmap

    Memory = perfkit.Memory if library == "perfkit" else joblib.Memory
    make = Memory(tmp_path / library, mmap_mode=mmap_mode, verbose=0).cache(_arrays)
    want = _arrays(200_000)
    for call in range(2):  # computed, then a hit
        out = make(200_000)
        for name, a in out.items():
            np.testing.assert_array_equal(a, want[name])
            if library == "perfkit" and not _pickled_out_of_band(want[name]):
                continue  # (numpy < 2.1 pickles a dense transposed array in band: a copy, not mapped)
            assert isinstance(a, np.memmap), (call, name, type(a))
            assert (a.dtype, a.shape) == (want[name].dtype, want[name].shape)
            if library == "perfkit":  # (its memory layout too; joblib stores "t" C-ordered)
                assert a.strides == want[name].strides, name
            assert a.mode == mmap_mode and os.path.isfile(a.filename), (name, a.mode, a.filename)
            assert a.flags.writeable == (mmap_mode != "r"), name
            base = a
            while getattr(base, "base", None) is not None:
                base = base.base
            assert isinstance(base, mmap.mmap), (name, type(base))
            a.flush()
    big = out["a"]
    if mmap_mode == "r":
        with pytest.raises(ValueError, match="read-only"):
            big[0] = 42.0
    else:
        big[0] = 42.0
        big.flush()
        assert (make(200_000)["a"][0] == 42.0) == (mmap_mode == "r+")  # "c": changes stay private
    del big, out
    out = make(200_000)
    names = ["f", "t", "0d", "ro", "i8", "a"]
    # Element by element, in both libraries' workers (helper-56: a
    # Fortran-ordered array reached a joblib worker transposed; a sum did
    # not see it).
    for parallel, delayed in ((perfkit.Parallel, perfkit.delayed), (joblib.Parallel, joblib.delayed)):
        got = parallel(n_jobs=2)(delayed(_values)(out[k]) for k in names)
        assert [g[0] for g in got] == [out[k].tolist() for k in names], parallel
    # Where it is in its file, as joblib's memmaps say: opened again there, the same values.
    for name in ("a", "f", "i8"):
        a = out[name]
        order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
        again = np.memmap(a.filename, dtype=a.dtype, mode="r", offset=a.offset, shape=a.shape, order=order)
        np.testing.assert_array_equal(again, a)


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_writes_through_an_r_plus_mapping_are_the_cached_value_as_in_joblib(tmp_path, library):
    # joblib returns what was written into an "r+" mapping on later reads,
    # mapped or not; perfkit used to report the entry corrupt and recompute.
    import gc
    import warnings

    import joblib

    Memory = perfkit.Memory if library == "perfkit" else joblib.Memory
    writable = Memory(tmp_path / library, mmap_mode="r+", verbose=0).cache(_ones)
    plain = Memory(tmp_path / library, verbose=0).cache(_ones)
    plain(300_000)
    if library == "perfkit":
        perfkit.memory._flush_writes()  # on disk: a large hit reads the file
    held = plain(300_000)  # a plain hit, taken before: the caller's own value
    mapped = writable(300_000)
    mapped[0] = 42.0
    del mapped
    gc.collect()
    assert held[0] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CacheWarning about a corrupt entry
        assert writable(300_000)[0] == 42.0
        assert Memory(tmp_path / library, verbose=0).cache(_ones)(300_000)[0] == 42.0


def test_compress(tmp_path):
    mem = perfkit.Memory(tmp_path, compress=True)
    f = mem.cache(lambda n: np.zeros(n))
    assert f(100_000).sum() == 0 and f(100_000).shape == (100_000,)
    [entry] = entries(tmp_path)
    assert entry.stat().st_size < 100_000  # 800 kB of zeros, compressed
    with pytest.raises(ValueError, match="zlib"):
        perfkit.Memory(tmp_path, compress=("lz4", 3))
    with pytest.warns(UserWarning, match="cannot be memmapped"):
        perfkit.Memory(tmp_path, compress=3, mmap_mode="r")


# -- eviction ----------------------------------------------------------------------------------


def _age(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def test_reduce_size_lru_by_items_bytes_and_age(tmp_path):
    mem = perfkit.Memory(tmp_path, bytes_limit="4K")
    f = mem.cache(lambda i: bytes(1000))
    for i in range(6):
        f(i)
    perfkit.memory._flush_writes()  # the files are edited below: they must be on disk
    # Give each entry a distinct last use: i=0 oldest ... i=5 newest.
    for i in range(6):
        key = f._key((i,), {})
        _age(Path(f._entry_path(key)), 1000 - 100 * i)
    # A hit refreshes the oldest one's last use.
    f(0)
    mem.reduce_size(items_limit=5)  # evicts i=1, the least recently used
    assert [f.check_call_in_cache(i) for i in range(6)] == [True, False, True, True, True, True]
    mem.reduce_size()  # the Memory's bytes_limit: 4 KiB keeps the 3 most recent (each ~1.2 kB)
    assert sum(p.stat().st_size for p in entries(tmp_path)) <= 4 * 1024
    assert [f.check_call_in_cache(i) for i in range(6)] == [True, False, False, False, True, True]
    mem.reduce_size(age_limit=datetime.timedelta(seconds=550))
    assert [f.check_call_in_cache(i) for i in range(6)] == [True, False, False, False, False, True]
    with pytest.raises(ValueError, match="positive"):
        mem.reduce_size(age_limit=datetime.timedelta(seconds=-1))
    with pytest.raises(ValueError, match="bytes_limit"):
        mem.reduce_size(bytes_limit="lots")


# -- hashing -------------------------------------------------------------------------------------

CASES_EQUAL = [
    (lambda: np.arange(1e6), lambda: np.arange(1e6)),
    (lambda: np.zeros((3, 4)), lambda: np.zeros((4, 3)).T.copy()),
    (lambda: ["aa", "aa"], lambda: ["aa", "aaZ"[:2]]),  # one string object vs two equal ones
    (
        lambda: pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}),
        lambda: pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}),
    ),
    (lambda: {"a": 1, "b": 2}, lambda: {"b": 2, "a": 1}),
    (lambda: {"x", "y", "z"}, lambda: {"z", "y", "x"}),
    (lambda: bytes(10_000), lambda: bytes(10_000)),
]

CASES_DIFFERENT = [
    (lambda: np.arange(10.0), lambda: np.arange(10.0).astype(np.float32)),  # dtype
    (lambda: np.zeros((2, 6)), lambda: np.zeros((3, 4))),  # shape
    (lambda: np.ones((3, 4)), lambda: np.asfortranarray(np.ones((3, 4)))),  # memory order
    (lambda: np.arange(1e6), lambda: np.concatenate([np.arange(1e6 - 1), [0.0]])),  # one value
    (lambda: pd.DataFrame({"a": [1.0, 2.0]}), lambda: pd.DataFrame({"a": [1.0, 3.0]})),
    (lambda: pd.DataFrame({"a": [1.0, 2.0]}), lambda: pd.DataFrame({"b": [1.0, 2.0]})),
    (lambda: [1, 2], lambda: (1, 2)),
    (lambda: 1, lambda: 1.0),
    (  # one value, in a dtype the buffer protocol does not describe
        lambda: np.array(["2020-01-01", "2020-01-02"], dtype="M8[ns]"),
        lambda: np.array(["2020-01-01", "2020-01-03"], dtype="M8[ns]"),
    ),
    (  # unit
        lambda: np.array(["2020-01-01"], dtype="M8[ns]"),
        lambda: np.array(["2020-01-01"], dtype="M8[us]"),
    ),
]


@pytest.mark.parametrize("i", range(len(CASES_EQUAL)))
def test_hash_equal_like_joblib(i):
    a, b = CASES_EQUAL[i][0](), CASES_EQUAL[i][1]()
    assert perfkit.hash(a) == perfkit.hash(b)
    assert joblib.hash(a) == joblib.hash(b)  # the anchor agrees these are equal


@pytest.mark.parametrize("i", range(len(CASES_DIFFERENT)))
def test_hash_different_like_joblib(i):
    a, b = CASES_DIFFERENT[i][0](), CASES_DIFFERENT[i][1]()
    assert perfkit.hash(a) != perfkit.hash(b)
    assert joblib.hash(a) != joblib.hash(b)


@pytest.mark.version_sensitive  # code objects' fields and positions differ across CPythons
def test_a_function_hashes_by_what_it_does_not_by_its_copy_or_column():
    import cloudpickle

    def scale(x, factor=2):
        return [x * factor for _ in range(3)]

    # Two copies of one function (unpickled twice, as two workers get it):
    # marshal's bytes of their code differ, what they do does not.
    one, two = (cloudpickle.loads(cloudpickle.dumps(scale)) for _ in range(2))
    keep = [one.__code__] * 3  # (reference counts are what marshal's bytes depend on)
    assert perfkit.hash(one) == perfkit.hash(two) == perfkit.hash(scale)
    del keep
    # The same lambda, twice on one line (only its columns differ).
    a, b = (lambda x: x + 1), (lambda x: x + 1)
    assert perfkit.hash(a) == perfkit.hash(b)
    assert perfkit.hash(a) != perfkit.hash(lambda x: x + 2)
    assert perfkit.hash(scale) != perfkit.hash(lambda x, factor=2: [x * factor for _ in range(4)])

    # Same instructions, other try blocks (3.11+ keeps those apart, in the exception table).
    def make(b_in_try):
        if b_in_try:

            def guarded(a, b):
                try:
                    a()
                    b()
                except ValueError:
                    return "caught"
                return "done"
        else:

            def guarded(a, b):
                try:
                    a()
                except ValueError:
                    return "caught"
                else:
                    b()
                return "done"

        return guarded

    assert perfkit.hash(make(True)) != perfkit.hash(make(False))
    assert perfkit.hash(make(True)) == perfkit.hash(make(True))


def _scaler(k):
    def scale(x):
        return x * k

    return scale


def _power(x, p):
    return x**p


class _Offset:
    def __init__(self, d):
        self.d = d

    def add(self, x):
        return x + self.d


def test_what_a_cached_callable_holds_is_part_of_its_keys(tmp_path):
    """Two closures of one maker (its plain parameters), methods of two
    instances, two partials of one function: one name and source, other
    results. Each keeps its own entries in one store (joblib.Memory counts a
    method's instance so too), and as arguments of another cached function
    they hash apart. A list a closure appends to is not its identity."""
    mem = perfkit.Memory(tmp_path, verbose=0)
    pairs = [
        (mem.cache(_scaler(2)), mem.cache(_scaler(10)), (2, 10)),
        (mem.cache(_Offset(1).add), mem.cache(_Offset(100).add), (2, 101)),
        (mem.cache(functools.partial(_power, p=2)), mem.cache(functools.partial(_power, p=3)), (1, 1)),
    ]
    for a, b, (want_a, want_b) in pairs:
        assert (a(1), b(1)) == (want_a, want_b)
        assert (a(1), b(1)) == (want_a, want_b)  # (from the cache)
        assert perfkit.hash(a) != perfkit.hash(b)
    sq, cube = pairs[2][0], pairs[2][1]
    assert (sq(3), cube(3)) == (9, 27)
    # A partial's entries are found by the next run too (its repr names an address).
    assert "0x" not in sq.func_dir
    log = []

    def logged(x):
        log.append(x)
        return x

    assert mem.cache(logged)(5) == 5 and log == [5]
    assert mem.cache(logged)(5) == 5 and log == [5]  # (found, though `log` changed)
    # A partial of a method: its instance counts. A partial's arguments are
    # read at each call (a dict changed after caching is another key).
    by1, by100 = (mem.cache(functools.partial(_Offset(d).add)) for d in (1, 100))
    assert (by1(1), by100(1)) == (2, 101)
    params = {"p": 2}
    powered = mem.cache(functools.partial(_power_of, params))
    assert powered(3) == 9
    params["p"] = 3
    assert powered(3) == 27


def _power_of(params, x):
    return x ** params["p"]


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_defaults_changed_after_caching_are_the_calls_arguments_as_in_joblib(tmp_path, library):
    """A function's defaults reassigned after caching (``f.__defaults__ = ...``,
    a keyword-only one changed in ``__kwdefaults__``) are what a call without
    that argument passes from then on: joblib binds each call to the function's
    signature as it is then, and returns what the function returns. perfkit
    bound every call to the defaults seen when it was cached: the old default's
    entry was returned for the new default (and a miss stored the new
    default's result under the old one's key)."""
    mem = (perfkit if library == "perfkit" else joblib).Memory(str(tmp_path), verbose=0)
    calls = []

    def scale(x, factor=2, *, offset=0):
        calls.append((x, factor, offset))
        return x * factor + offset

    cached = mem.cache(scale)
    for _ in range(2):  # the second round from the cache
        assert cached(10) == 20
        scale.__defaults__ = (3,)
        assert cached(10) == 30
        scale.__kwdefaults__["offset"] = 1  # (changed in place)
        assert cached(10) == 31
        scale.__defaults__, scale.__kwdefaults__ = (2,), {"offset": 0}
    assert calls == [(10, 2, 0), (10, 3, 0), (10, 3, 1)]


def test_a_partials_keywords_are_read_at_each_call(tmp_path):
    """A partial's keywords changed after caching (``p.keywords["p"] = 3``)
    are the call's arguments from then on, as its positional arguments are
    (README: "a partial's arguments (read at each call)"): each call returns
    what the partial itself returns, and each computes once. (joblib.Memory
    keeps the keywords it first saw: it returns 9 where the partial gives 27.)"""
    mem = perfkit.Memory(tmp_path, verbose=0)
    calls = []

    def power(x, p):
        calls.append((x, p))
        return x**p

    part = functools.partial(power, p=2)
    cached = mem.cache(part)
    for _ in range(2):  # the second round from the cache
        assert cached(3) == 9
        part.keywords["p"] = 3
        assert cached(3) == 27
        assert cached(3, p=2) == 9  # the keyword's old value, passed: the first entry
        del part.keywords["p"]
        with pytest.raises(TypeError):
            cached(3)  # as part(3): p is missing
        part.keywords.update(p=2)
    assert calls == [(3, 2), (3, 3)]
    part.keywords["p"] = 3
    assert cached.check_call_in_cache(3) and not cached.check_call_in_cache(4)
    assert cached.call_and_shelve(3).metadata["input_args"] == {"x": "3", "p": "3"}
    assert part.keywords == {"p": 3} and calls == [(3, 2), (3, 3)]


class _SelfCachingModel:
    def __init__(self, mem, scale):
        self.scale = scale
        self.predict = mem.cache(self._predict)

    def _predict(self, x):
        return x * self.scale


class _Model:
    def __init__(self, scale):
        self.scale = scale
        self.lock = threading.Lock()

    def _predict(self, x):
        return x * self.scale


def test_a_method_cached_on_its_own_instance_is_cached(tmp_path):
    """As joblib caches it: the instance, part of the key, holds the cached
    method (a cycle), or a lock (unpicklable: a warning that says what to
    do, and ignore=["self"], joblib's answer, works)."""
    mem = perfkit.Memory(tmp_path, verbose=0)
    model = _SelfCachingModel(mem, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.predict(2) == 6
    assert model.predict.check_call_in_cache(2)
    locked = _Model(5)
    with pytest.warns(perfkit.memory.CacheWarning, match=r"ignore=\['self'\]"):
        assert mem.cache(locked._predict)(2) == 10
    left_out = mem.cache(locked._predict, ignore=["self"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert left_out(2) == 10
    assert left_out.check_call_in_cache(2)


def _read_only(a):
    a = a.copy(order="K")
    a.flags.writeable = False
    return a


def _memmap_of(path, a, mode):
    """An np.memmap of mode ``mode`` holding ``a``'s values, in its memory order."""
    order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    w = np.memmap(path, dtype=a.dtype, mode="w+", shape=a.shape, order=order)
    w[...] = a
    w.flush()
    return w if mode == "w+" else np.memmap(path, dtype=a.dtype, mode=mode, shape=a.shape, order=order)


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(12.0),
        lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        lambda: np.arange(24, dtype=np.int32).reshape(2, 3, 4),
        lambda: np.array(3.5),
        lambda: np.array(["2020-01-01", "2021-06-30"], dtype="M8[ns]"),
        lambda: np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
    ],
    ids=["1d", "fortran", "3d-int32", "0d", "datetime64", "structured"],
)
def test_read_only_and_memory_mapped_arrays_hash_as_their_values_like_joblib(tmp_path, make):
    """A read-only array (np.frombuffer, pandas 3's to_numpy(), a mapped
    cache result) and an np.memmap hash like the equal writable array, as
    joblib.hash(coerce_mmap=True) has them: writeability and the memmap
    class used to enter the hashed stream."""
    a = make()
    same = {
        "read-only copy": _read_only(a),
        "frombuffer": np.frombuffer(a.tobytes(order="A"), dtype=a.dtype).reshape(
            a.shape, order="F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
        ),
        "memmap r": _memmap_of(tmp_path / "r.dat", a, "r"),
        "memmap r+": _memmap_of(tmp_path / "rplus.dat", a, "r+"),
        "memmap c": _memmap_of(tmp_path / "c.dat", a, "c"),
        "memmap w+": _memmap_of(tmp_path / "wplus.dat", a, "w+"),
    }
    want, want_joblib = perfkit.hash(a), joblib.hash(a)
    for name, b in same.items():
        np.testing.assert_array_equal(b, a)
        assert (b.flags.c_contiguous, b.flags.f_contiguous) == (a.flags.c_contiguous, a.flags.f_contiguous)
        assert joblib.hash(b, coerce_mmap=True) == want_joblib, name  # the anchor agrees they are equal
        assert perfkit.hash(b) == want, name
        assert perfkit.hash(b, coerce_mmap=True) == want, name
        assert perfkit.hash([b, {"k": b}]) == perfkit.hash([a, {"k": a}]), name
    # What still tells arrays apart does so for read-only ones and memmaps too.
    ro = same["read-only copy"]
    if a.ndim >= 2:
        other_order = np.ascontiguousarray(a) if a.flags.f_contiguous else np.asfortranarray(a)
        assert perfkit.hash(_read_only(other_order)) != want
        assert perfkit.hash(_read_only(a.reshape(-1))) != want
    if a.dtype.kind in "if":
        assert perfkit.hash(_read_only(a.astype(np.float32 if a.dtype != np.float32 else np.float64))) != want
        changed = ro.copy()
        changed.flat[0] += 1
        assert perfkit.hash(_memmap_of(tmp_path / "changed.dat", changed, "r")) != want


def test_frames_on_read_only_arrays_hash_as_their_values_like_joblib():
    """pandas 3 (copy-on-write) frames can hold read-only arrays, and its
    to_numpy() hands out read-only views: equal frames and arrays hash equal."""
    rw = np.arange(12.0).reshape(6, 2)
    d1 = pd.DataFrame(rw, columns=["a", "b"], copy=False)
    d2 = pd.DataFrame(_read_only(rw), columns=["a", "b"], copy=False)
    assert d1.equals(d2)
    assert joblib.hash(d1) == joblib.hash(d2)
    assert perfkit.hash(d1) == perfkit.hash(d2)
    v = pd.Series(np.arange(5.0)).to_numpy()
    v.flags.writeable = False  # (pandas 3 returns it so already)
    assert perfkit.hash(v) == perfkit.hash(np.arange(5.0))
    assert perfkit.hash(d1) != perfkit.hash(pd.DataFrame(rw + 1, columns=["a", "b"]))


def test_memoryviews_of_read_only_and_writable_memory_hash_alike():
    data = bytes(range(256)) * 40
    assert perfkit.hash(memoryview(data)) == perfkit.hash(memoryview(bytearray(data)))
    assert perfkit.hash(memoryview(data)[:16]) == perfkit.hash(memoryview(bytearray(data))[:16])
    assert perfkit.hash(memoryview(data)) != perfkit.hash(memoryview(data[:-1] + b"x"))


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_a_read_only_argument_is_a_hit_for_its_writable_twin_as_in_joblib(tmp_path, library):
    Memory = perfkit.Memory if library == "perfkit" else joblib.Memory
    calls = []

    @Memory(tmp_path / library, verbose=0).cache
    def total(x):
        calls.append(1)
        return float(np.sum(x))

    frame = pd.DataFrame({"a": np.arange(1000.0)})
    assert total(np.arange(1000.0)) == total(_read_only(np.arange(1000.0)))
    assert total(frame["a"].to_numpy(copy=False)) == total(np.frombuffer(np.arange(1000.0).tobytes()))
    assert len(calls) == 1


def test_hash_shape_and_identity():
    a = np.arange(5.0)
    h = perfkit.hash(a)
    assert len(h) == 32 and int(h, 16) >= 0
    # Object identity does not leak into the hash (pickle's memo would otherwise tell these apart).
    assert perfkit.hash([a, a]) == perfkit.hash([a, a.copy()])
    x = [1, 2]
    assert perfkit.hash((x, x)) == perfkit.hash(([1, 2], [1, 2]))
    # Cyclic objects still hash (with the memo), deterministically.
    c: list = [1]
    c.append(c)
    d: list = [1]
    d.append(d)
    assert perfkit.hash(c) == perfkit.hash(d)
    # A non-contiguous view hashes like its contiguous copy's values, not like the base.
    base = np.arange(20.0)
    assert perfkit.hash(base[::2]) == perfkit.hash(base[::2].copy())
    assert perfkit.hash(memoryview(bytes(8000))) != perfkit.hash(bytes(8000))
    with pytest.raises(TypeError):
        perfkit.hash(threading.Lock())


HASH_SCRIPT = textwrap.dedent(
    """
    import numpy as np, pandas as pd, perfkit
    objs = [
        {"b": [1, 2.5, "s"], "a": {"x", "y", "zz"}, "c": frozenset({3, 4})},
        np.arange(1000.0).reshape(20, 50),
        pd.DataFrame({"a": np.arange(5), "b": list("abcde")}),
        ("text", b"bytes" * 2000, None, True),
    ]
    print(",".join(perfkit.hash(o) for o in objs))
    """
)


def test_hash_is_stable_across_processes():
    outs = set()
    for seed in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run(
            [sys.executable, "-c", HASH_SCRIPT], capture_output=True, text=True, env=env, check=True
        )
        outs.add(r.stdout.strip())
    assert len(outs) == 1, outs


def test_hash_threads_agree():
    arr = np.random.default_rng(1).standard_normal(200_000)
    want = perfkit.hash(arr)
    got = []

    def work():
        for _ in range(20):
            got.append(
                perfkit.hash(arr) == want and perfkit.hash({"k": [1, 2]}) == perfkit.hash({"k": [1, 2]})
            )

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got and all(got)


# -- bad input: warnings naming the function, results still returned -----------------------------


def test_unpicklable_argument_runs_uncached_with_warning(tmp_path):
    mem = perfkit.Memory(tmp_path)
    calls = []

    @mem.cache
    def uses_lock(lock, x):
        calls.append(x)
        return x + 1

    lock = threading.Lock()
    with pytest.warns(CacheWarning, match=r"cannot hash the arguments of .*uses_lock\(\)"):
        assert uses_lock(lock, 1) == 2
    with pytest.warns(CacheWarning):
        assert uses_lock(lock, 1) == 2
    assert calls == [1, 1] and entries(tmp_path) == []


def test_unpicklable_result_is_returned_with_warning(tmp_path):
    mem = perfkit.Memory(tmp_path)

    @mem.cache
    def make_lock(x):
        return threading.Lock()

    with pytest.warns(
        CacheWarning, match=r"result of .*make_lock\(\) cannot be pickled.*returned but not cached"
    ) as caught:
        lk = make_lock(1)
    assert hasattr(lk, "acquire") and entries(tmp_path) == []
    # The warning points at the caller's line, not into perfkit.
    assert [w.filename for w in caught] == [__file__], [(w.filename, w.lineno) for w in caught]


def test_hash_takes_joblibs_arguments():
    assert (
        perfkit.hash([1, 2], hash_name="sha1")
        == perfkit.hash([1, 2], coerce_mmap=True)
        == perfkit.hash([1, 2])
    )
    with pytest.raises(ValueError, match="md5"):
        perfkit.hash([1, 2], hash_name="sha256")


def test_lambdas_and_local_functions_as_arguments_hash_by_code(tmp_path):
    mem = perfkit.Memory(tmp_path)
    calls = []

    @mem.cache
    def apply(fn, x):
        calls.append(x)
        return fn(x)

    assert apply(lambda v: v * 2, 3) == 6
    assert apply(lambda v: v * 2, 3) == 6  # same code: a hit
    assert apply(lambda v: v * 3, 3) == 9  # other code: a miss
    assert calls == [3, 3]


def test_location_is_a_file_warns_and_returns(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    mem = perfkit.Memory(blocker)
    f = mem.cache(_add)
    with pytest.warns(
        CacheWarning, match=r"could not store the result of .*_add\(\).*returned but not cached"
    ):
        assert f(1) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert not f.check_call_in_cache(1)


# -- the demo's cache step -----------------------------------------------------------------------


def test_demo_cache_step(tmp_path, capsys):
    from perfkit import demo

    docs = demo.make_corpus(20)
    saved = demo.cache_step(docs, location=str(tmp_path))
    out = capsys.readouterr().out
    assert "run_pipeline() took" in out and "from the cache" in out and "saved" in out
    assert isinstance(saved, float)
    assert len(entries(tmp_path)) == 1
    # A given step is cached under its own name, and the cached result is the step's result.
    calls = []

    def scoring(d):
        calls.append(1)
        return demo.run_pipeline(d)

    demo.cache_step(docs, step=scoring, location=str(tmp_path))
    assert calls == [1] and "scoring() took" in capsys.readouterr().out
    # Without a location, its temporary cache directory is removed afterwards.
    before = set(os.listdir(tempfile_dir()))
    demo.cache_step(docs[:3])
    assert not [n for n in set(os.listdir(tempfile_dir())) - before if n.startswith("perfkit-demo-cache-")]


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_cache_validation_callback(tmp_path):
    mem = perfkit.Memory(tmp_path)
    seen = []

    def valid_if_fast(metadata):
        seen.append(metadata)
        return metadata["duration"] < 60

    f = counted(mem, _add, cache_validation_callback=valid_if_fast)
    f(1), f(1)
    assert len(f.calls) == 1 and seen and seen[0]["function"].endswith("_add")
    never = counted(mem, _add, cache_validation_callback=lambda metadata: False)
    never(1), never(1)
    assert len(never.calls) == 2


def test_durable_and_verbose(tmp_path, capsys):
    mem = perfkit.Memory(tmp_path, durable=True, verbose=1)
    f = counted(mem, _add)
    assert f(2) == 7 and f(2) == 7 and len(f.calls) == 1
    out = capsys.readouterr().out
    assert out.count("[Memory] Calling") == 1 and "_add" in out
    assert len(entries(tmp_path)) == 1


def _square(x):
    return x * x


def test_a_memory_pickled_by_an_older_perfkit_still_caches(tmp_path):
    # helper-56: a Memory pickled before `_location` existed (inside a saved
    # sklearn pipeline, say) failed its first background write on it.
    old_state = {k: v for k, v in vars(perfkit.Memory(tmp_path / "c", verbose=0)).items() if k != "_location"}
    memory = perfkit.Memory.__new__(perfkit.Memory)  # what unpickling the old state does
    memory.__setstate__(old_state)
    cached = memory.cache(_square)
    assert [cached(i) for i in range(3)] == [0, 1, 4]
    perfkit.memory._flush_writes()
    assert len(list((tmp_path / "c").rglob("*.pkc"))) == 3
    assert pickle.loads(pickle.dumps(memory)).cache(_square)(2) == 4


def test_a_call_only_its_decorators_wrapper_takes_warns_that_it_ran_uncached(tmp_path):
    # functools.wraps makes the signature the wrapped function's; a wrapper
    # that takes an argument of its own (retries=) got calls that do not fit
    # it, which ran without the cache and said nothing. A call that the
    # function's own signature refuses (no wrapper) is its error, with no warning.
    runs = []

    def with_retries(f):
        @functools.wraps(f)
        def wrapper(*args, retries=0, **kwargs):
            runs.append(retries)
            return f(*args, **kwargs)

        return wrapper

    @with_retries
    def double(x):
        return 2 * x

    cached = perfkit.Memory(tmp_path).cache(double)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cached(3) == 6 and cached(3) == 6
    assert runs == [0]  # the second call was a hit
    with pytest.warns(CacheWarning, match=r"double\(\).*retries.*without the cache"):
        assert cached(3, retries=2) == 6
    assert runs == [0, 2]
    plain = perfkit.Memory(tmp_path).cache(lambda x: 2 * x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError):
            plain(3, 4)
