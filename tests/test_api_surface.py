"""perfkit's public names and signatures against the ones users come from
(joblib, cProfile): what ``help()``/``inspect.signature`` show, what a type
checker sees of them, and the names a migrating user imports."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import joblib
import perfkit
import pytest


def _public_callables():
    """Each public callable of perfkit and its public methods, and those of
    what ``Memory.cache`` returns: (name, object)."""
    import perfkit.memory

    returned = ("MemorizedFunc", "NotMemorizedFunc", "NotMemorizedResult")
    for name in [*perfkit.__all__, *returned]:
        obj = getattr(perfkit, name) if name in perfkit.__all__ else getattr(perfkit.memory, name)
        if not callable(obj) or (isinstance(obj, type) and issubclass(obj, BaseException)):
            continue  # (exceptions: inspect finds no signature for the builtin ones either)
        yield name, obj
        if isinstance(obj, type):
            for attr, value in vars(obj).items():
                if attr.startswith("_") and attr not in ("__call__", "__enter__", "__exit__"):
                    continue
                if isinstance(value, property):
                    yield f"{name}.{attr}", value.fget
                elif callable(value):
                    yield f"{name}.{attr}", getattr(obj, attr)


@pytest.mark.parametrize(
    "name, obj", list(_public_callables()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_help_shows_a_signature_and_a_docstring(name, obj):
    # joblib's signatures read as Python (`n_jobs=default(None)`); a default
    # shown as `<object object at 0x7f…>` tells the reader nothing.
    for anchor in (joblib.Parallel, joblib.parallel_config, joblib.Memory):
        assert " at 0x" not in str(inspect.signature(anchor))
    if isinstance(obj, type) and obj.__init__ is object.__init__ and obj.__new__ is object.__new__:
        pass  # (not made by the user: perfkit.Recording comes from load() or a Profiler)
    else:
        signature = str(inspect.signature(obj))
        assert " at 0x" not in signature, f"{name}{signature}"
    if not name.endswith(("__enter__", "__exit__")):  # (cProfile's and joblib's have none either)
        assert inspect.getdoc(obj), f"help(perfkit.{name}) shows no docstring"


def _mypy_strict(tmp_path, source: str) -> str:
    program = tmp_path / "user.py"
    program.write_text(textwrap.dedent(source))
    # (outside the checkout: from its root mypy would also find python/perfkit)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), str(program)],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.stdout + result.stderr


def _square(x: int) -> int:
    """Squares x."""
    return x * x


def test_cached_function_keeps_the_wrapped_functions_attributes(tmp_path):
    # joblib's MemorizedFunc carries the function's __name__, __qualname__,
    # __module__ and __wrapped__, as functools.wraps sets them; code that logs
    # `f.__name__` or unwraps a cached function must run, and type-check, with
    # perfkit's too (whose Memory(None).cache result carries them as well).
    anchor = joblib.Memory(str(tmp_path / "j"), verbose=0).cache(_square)
    for ours in (perfkit.Memory(str(tmp_path / "p")).cache(_square), perfkit.Memory(None).cache(_square)):
        for attr in ("__name__", "__qualname__", "__module__", "__wrapped__", "__doc__"):
            assert getattr(ours, attr) == (_square if attr == "__wrapped__" else getattr(_square, attr)), attr
            if attr != "__doc__":  # (joblib's: "Memoized version of ...")
                assert getattr(ours, attr) == getattr(anchor, attr), attr
    output = _mypy_strict(
        tmp_path,
        """
        import perfkit

        def square(x: int) -> int:
            return x * x

        def names(location: str | None) -> list[str]:
            cached = perfkit.Memory(location).cache(square)
            original = cached.__wrapped__
            n: int = original(3)
            return [cached.__name__, cached.__qualname__, cached.__module__, str(n)]
        """,
    )
    assert "Success" in output, output


def test_joblibs_memory_names_import_from_perfkit(tmp_path):
    # `from joblib import Memory, MemorizedResult` (an isinstance check on what
    # call_and_shelve returned) becomes `from perfkit import ...`.
    for name in ("Memory", "MemorizedResult", "expires_after", "hash"):
        assert name in joblib.__all__, name
        assert name in perfkit.__all__, name
    anchor = joblib.Memory(str(tmp_path / "j"), verbose=0).cache(_square).call_and_shelve(3)
    ours = perfkit.Memory(str(tmp_path / "p")).cache(_square).call_and_shelve(3)
    assert isinstance(anchor, joblib.MemorizedResult)
    assert isinstance(ours, perfkit.MemorizedResult)
    assert ours.get() == anchor.get() == 9


def _work() -> int:
    return sum(_square(i) for i in range(200))


def test_pstats_reads_what_perfkit_load_returns(tmp_path):
    # pstats.Stats takes a cProfile.Profile and a file; perfkit.load's
    # recording (of a .prof, or of collapsed stacks pstats cannot read) is
    # taken as a profiler is, with the table pstats reads from the file.
    import cProfile
    import io
    import pstats

    prof = tmp_path / "work.prof"
    with perfkit.Profiler() as profiler:
        _work()
    profiler.dump_stats(prof)
    anchor = pstats.Stats(str(prof), stream=io.StringIO())
    recording = perfkit.load(prof)
    ours = pstats.Stats(recording, stream=io.StringIO())
    assert ours.stats == anchor.stats
    assert ours.total_calls == anchor.total_calls
    assert pstats.Stats(recording, stream=io.StringIO()).stats == anchor.stats  # (read twice)
    cprofile = cProfile.Profile()
    cprofile.runcall(_work)
    assert pstats.Stats(cprofile, stream=io.StringIO()).add(recording).total_calls > anchor.total_calls

    collapsed = tmp_path / "stacks.txt"
    collapsed.write_text("main;work;square 30\nmain;work 10\n")
    table = pstats.Stats(perfkit.load(collapsed), stream=io.StringIO()).stats
    assert {name for (_, _, name) in table} == {"main", "work", "square"}


def test_perfkit_load_names_a_pickle_as_one(tmp_path):
    # `from joblib import load` -> `from perfkit import load` reads profiles,
    # not what joblib.dump wrote: the error says what the file is and what reads it.
    path = tmp_path / "model.joblib"
    joblib.dump({"weights": [1, 2, 3]}, path)
    assert joblib.load(path) == {"weights": [1, 2, 3]}
    with pytest.raises(perfkit.ProfileError, match=r"a Python pickle.*joblib\.load"):
        perfkit.load(path)


def test_runctx_takes_any_mapping_for_locals_as_cprofile_does(tmp_path):
    # exec takes any mapping for locals, and typeshed's cProfile.runctx says
    # Mapping[str, Any]: perfkit's runctx said dict, so a ChainMap that runs
    # failed type checking.
    import collections
    import cProfile

    for runctx in (cProfile.runctx, perfkit.runctx):
        scope = collections.ChainMap({"y": 2})
        runctx("x = y + 1", {}, scope, str(tmp_path / "r.prof"))
        assert scope["x"] == 3
    output = _mypy_strict(
        tmp_path,
        """
        import cProfile
        import collections
        from collections.abc import Mapping
        from typing import Any

        import perfkit

        scope: Mapping[str, Any] = collections.ChainMap({})
        cProfile.runctx("x = 1", {}, scope)
        perfkit.runctx("x = 1", {}, scope)
        perfkit.Profiler().runctx("x = 1", {}, scope)
        """,
    )
    assert "Success" in output, output
