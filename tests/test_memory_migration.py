"""Programs written for joblib.Memory, run with perfkit.Memory instead: the
same results, hits and kinds of arrays, side by side with joblib."""

from __future__ import annotations

import joblib
import numpy as np
import perfkit
import pytest

# Binding and pickling details differ between interpreters: CI runs this file on each.
pytestmark = pytest.mark.version_sensitive


def both_memories(tmp_path, **kw):
    return [
        ("joblib", joblib.Memory(tmp_path / "joblib", verbose=0, **kw)),
        ("perfkit", perfkit.Memory(tmp_path / "perfkit", verbose=0, **kw)),
    ]


def kinds(arrays):
    """What a caller sees of each array: its class and whether it can be written."""
    return [(type(a).__name__, a.flags.writeable) for a in arrays]


def splits(n):
    return np.arange(n, dtype=float), np.ones((n, 4))


def views(n):
    # Results that are views of a larger array: a few columns, every other
    # row, a transposed copy (X[:, :k] after a feature selection, a subsample).
    a = np.arange(n * 10, dtype=float).reshape(n, 10)
    return a[:, :3], a[::2], a.T


def test_call_returns_the_memory_mapped_result_as_joblib_does(tmp_path):
    # joblib's MemorizedFunc.call (always computes and stores) returns the
    # result loaded back from the cache under mmap_mode, as the cached call
    # does: read-only memmaps. perfkit's returned the function's own writable
    # arrays.
    seen = {}
    for name, memory in both_memories(tmp_path, mmap_mode="r"):
        f = memory.cache(splits)
        out, _meta = f.call(1000)
        seen[name] = (kinds(out), kinds(f(1000)), kinds(f.call(1000)[0]))
    assert seen["perfkit"] == seen["joblib"]
    assert seen["perfkit"][0] == [("memmap", False)] * 2


async def async_splits(n):
    return splits(n)


def test_async_call_returns_the_memory_mapped_result(tmp_path):
    import asyncio

    f = perfkit.Memory(tmp_path, mmap_mode="r").cache(async_splits)
    out, _meta = asyncio.run(f.call(1000))
    assert kinds(out) == kinds(asyncio.run(f(1000))) == [("memmap", False)] * 2


def test_views_in_a_result_are_memory_mapped_as_joblib_maps_them(tmp_path):
    # joblib writes every array of a result contiguously and maps each under
    # mmap_mode="r". perfkit's store kept a strided view (columns, every other
    # row) inside the pickle stream: it came back as a writable copy in memory,
    # the whole array read on every hit, however large.
    seen = {}
    for name, memory in both_memories(tmp_path, mmap_mode="r"):
        f = memory.cache(views)
        seen[name] = [kinds(f(1000)), kinds(f(1000))]
        assert all(np.array_equal(a, b) for a, b in zip(f(1000), views(1000)))
    assert seen["perfkit"] == seen["joblib"]
    assert seen["perfkit"][1] == [("memmap", False)] * 3


def opened_mapped(path):
    # A loader's idiom: the data set opened memory-mapped, returned whole or in part.
    x = np.load(path, mmap_mode="r")
    return x, x[:100], x[:, :3]


def test_memmaps_in_a_result_come_back_as_joblib_returns_them(tmp_path):
    # numpy pickles an np.memmap (a subclass) into the pickle stream, as an
    # np.memmap of no file: under mmap_mode="r" perfkit's hits returned
    # writable in-memory "memmaps" (filename None), each read whole from the
    # stream; joblib returns read-only memmaps of its cache entry.
    path = tmp_path / "data.npy"
    np.save(path, np.arange(20_000.0).reshape(2_000, 10))
    seen = {}
    for name, memory in both_memories(tmp_path, mmap_mode="r"):
        f = memory.cache(opened_mapped)
        f(path)
        hit = f(path)
        # (kind, writable, mapped from the cache's own entry)
        seen[name] = [
            (*kind, str(tmp_path / name) in (getattr(a, "filename", None) or ""))
            for kind, a in zip(kinds(hit), hit)
        ]
        assert all(np.array_equal(a, b) for a, b in zip(hit, opened_mapped(path)))
    assert seen["perfkit"] == seen["joblib"] == [("memmap", False, True)] * 3
    # Without mmap_mode, plain arrays in memory, as joblib's.
    f = perfkit.Memory(tmp_path / "unmapped").cache(opened_mapped)
    first = f(path)
    hit = f(path)
    assert [type(a) for a in hit] == [np.ndarray] * 3
    assert all(np.array_equal(a, b) for a, b in zip(hit, first))
