"""perfkit's Python API: cProfile's interface (Profiler, run, runctx),
perfkit.profile as context manager and decorator, clocks, and the errors
when two profilers collide."""

from __future__ import annotations

import cProfile
import os
import pstats
import re
import sys

import perfkit
import pytest
from conftest import (
    assert_same_counts,
    assert_same_python_counts,
    gc_disabled,
    is_profiler_key,
    program,
    run_cli,
    run_cprofile,
    summarize,
)

sensitive = pytest.mark.version_sensitive


CALLSITES = program("callsites")
RECURSION = program("recursion")


def _body():
    """What the API tests profile: a small, deterministic program."""
    CALLSITES.main()
    RECURSION.fib(8)


def _cprofile_summary(func=_body, times=1):
    func()
    prof = cProfile.Profile()
    with gc_disabled():
        for _ in range(times):
            prof.enable()
            func()
            prof.disable()
    prof.create_stats()
    return summarize(prof.stats)


def _rows(text: str):
    """The (ncalls, function) pairs of a printed pstats table, profiler rows left out."""
    rows = set()
    in_table = False
    for line in text.splitlines():
        if line.strip().startswith("ncalls"):
            in_table = True
            continue
        if in_table and line.strip():
            parts = line.split(None, 5)
            if len(parts) == 6:
                name = parts[5]
                if "_lsprof" in name or "cProfile.py" in name or "perfkit" in name or "profiler.py" in name:
                    continue
                rows.add((parts[0], name))
    return rows


def _ordered_by(text: str):
    return [line.strip() for line in text.splitlines() if line.strip().startswith("Ordered by:")]


# -- Profiler ----------------------------------------------------------------------------


def test_profiler_defaults_and_state():
    p = perfkit.Profiler()
    assert p.enabled is False
    p.enable()
    try:
        assert p.enabled is True
    finally:
        p.disable()
    assert p.enabled is False
    p.disable()  # a second disable is harmless
    assert p.enabled is False


def test_recording_repr_counts_in_words():
    # It said "1 threads" for a one-thread recording.
    p = perfkit.Profiler()
    p.enable()
    sorted([3, 1, 2])
    p.disable()
    rec = p.recording()
    shown = repr(rec)
    assert ", 1 thread>" in shown, shown
    assert f"{len(rec.funcs())} functions, " in shown, shown


def test_profiler_rejects_unknown_clock():
    with pytest.raises(ValueError, match="clock"):
        perfkit.Profiler(clock="sundial")


@sensitive
def test_enable_disable_create_stats_matches_cprofile():
    cp = _cprofile_summary()
    p = perfkit.Profiler()
    with gc_disabled():
        p.enable()
        _body()
        p.disable()
    p.create_stats()
    assert isinstance(p.stats, dict) and p.stats
    assert_same_counts(cp, summarize(p.stats))


@sensitive
def test_enable_disable_cycles_accumulate():
    cp = _cprofile_summary(times=2)
    p = perfkit.Profiler()
    with gc_disabled():
        for _ in range(2):
            p.enable()
            _body()
            p.disable()
    assert_same_counts(cp, summarize(pstats.Stats(p).stats))


@sensitive
def test_enable_while_recording_records_none_of_its_own_work():
    """A second enable() while recording (a nested `with prof:`, runcall
    inside a recording) changes nothing, as in cProfile 3.9-3.11 (3.12+
    refuses it). It used to look for the threads to leave out again, and
    that work (threading.enumerate, _thread.get_ident, getattr, ...) was
    recorded as the program's rows."""
    cp = _cprofile_summary()
    p = perfkit.Profiler()
    with gc_disabled():
        p.enable()
        p.enable()
        _body()
        p.disable()
    assert_same_counts(cp, summarize(pstats.Stats(p).stats))


@sensitive
def test_clear_forgets():
    p = perfkit.Profiler()
    p.runcall(_body)
    p.clear()
    p.runcall(program("recursion").fact, 5)
    names = {k[2] for k in summarize(pstats.Stats(p).stats).funcs}
    assert names == {"fact"}


@sensitive
def test_context_manager():
    cp = _cprofile_summary()
    with gc_disabled(), perfkit.Profiler() as p:
        was_enabled = p.enabled
        _body()
    assert isinstance(p, perfkit.Profiler)
    assert was_enabled and not p.enabled
    assert_same_counts(cp, summarize(pstats.Stats(p).stats))


@sensitive
def test_context_manager_disables_on_exception():
    with pytest.raises(KeyError), perfkit.Profiler() as p:
        _body()
        raise KeyError("x")
    assert not p.enabled
    # Nothing keeps recording: another profiler can start.
    with perfkit.Profiler():
        pass


@sensitive
def test_runcall_returns_and_records():
    cp = _cprofile_summary()
    p = perfkit.Profiler()
    with gc_disabled():
        assert p.runcall(lambda: (_body(), 42)[1]) == 42
    got = summarize(pstats.Stats(p).stats)
    got = got.only(lambda k: k[2] != "<lambda>")
    assert_same_counts(cp, got)
    assert p.runcall(program("recursion").fact, 5) == 120
    assert p.runcall(dict, a=1) == {"a": 1}


@sensitive
def test_runcall_propagates_exceptions_and_disables():
    p = perfkit.Profiler()
    with pytest.raises(ZeroDivisionError):
        p.runcall(lambda: 1 / 0)
    assert not p.enabled
    assert any(k[2] == "<lambda>" for k in pstats.Stats(p).stats)


@sensitive
def test_run_uses_main_namespace(monkeypatch):
    import __main__

    monkeypatch.setattr(__main__, "_perfkit_test_body", _body, raising=False)
    _body()
    cp = cProfile.Profile()
    with gc_disabled():
        cp.run("_perfkit_test_body()")
    p = perfkit.Profiler()
    with gc_disabled():
        assert p.run("_perfkit_test_body()") is p
    cp.create_stats()
    assert_same_counts(summarize(cp.stats), summarize(pstats.Stats(p).stats))


@sensitive
def test_runctx_uses_given_namespaces():
    ns = {"body": _body}
    _body()
    cp = cProfile.Profile()
    with gc_disabled():
        cp.runctx("body()", ns, {})
    cp.create_stats()
    p = perfkit.Profiler()
    with gc_disabled():
        assert p.runctx("body()", ns, {}) is p
    assert_same_counts(summarize(cp.stats), summarize(pstats.Stats(p).stats))
    with pytest.raises(NameError):
        perfkit.Profiler().runctx("body()", {}, {})


@sensitive
@pytest.mark.parametrize("sort", ["calls", "cumulative", "tottime", "name", -1])
def test_print_stats(capsys, sort):
    _body()
    cp = cProfile.Profile()
    cp.runcall(_body)
    cp.print_stats(sort=sort)
    want = capsys.readouterr().out
    p = perfkit.Profiler()
    p.runcall(_body)
    p.print_stats(sort=sort)
    got = capsys.readouterr().out
    assert _rows(got) and _rows(got) == _rows(want)
    assert _ordered_by(got) == _ordered_by(want)


@sensitive
def _recurse(n):
    return n if n < 1 else _recurse(n - 1)


def _outer():
    return _recurse(3) + len([]) + sum(_recurse(1) for _ in range(2))


def _entries(profiler):
    """getstats() as comparable rows: (name, calls, recursive calls, callees)."""
    from cProfile import label

    rows = []
    for e in profiler.getstats():
        name = label(e.code)[2]
        if "disable" in name or "enable" in name:
            continue  # (the profilers' own switches)
        callees = sorted((label(s.code)[2], s.callcount, s.reccallcount) for s in e.calls or ())
        assert e.totaltime >= e.inlinetime >= 0
        rows.append((name, e.callcount, e.reccallcount, callees))
    return sorted(rows)


@sensitive  # what the hook sees differs across CPythons
def test_constructor_and_getstats_as_cprofiles():
    import time

    # cProfile's positional arguments: timer, timeunit, subcalls, builtins.
    for args in (
        (),
        (time.process_time,),
        (time.perf_counter, 0.0, True, True),
        (time.perf_counter_ns, 1e-9),
    ):
        ours, theirs = perfkit.Profiler(*args), cProfile.Profile(*args)
        for p in (ours, theirs):
            p.enable()
            _outer()
            p.disable()
        assert _entries(ours) == _entries(theirs)
        assert ("_recurse", 8, 5, [("_recurse", 5, 2)]) in _entries(ours)  # 4 + 2 + 2 calls
    python_only = perfkit.Profiler(None, 0.0, True, False)
    python_only.runcall(_outer)
    assert not [row for row in _entries(python_only) if row[0].startswith("<built-in")]
    with pytest.raises(TypeError, match="clock='wall' or clock='cpu'"):
        perfkit.Profiler(lambda: 0.0)
    with pytest.raises(ValueError, match="cpu time"):
        perfkit.Profiler(time.process_time, clock="wall")


def test_a_file_the_system_refuses_is_the_oserror_cprofile_raises(tmp_path):
    """`except OSError` (or FileNotFoundError) around dump_stats and loading
    catches perfkit's errors as it catches cProfile's and pstats'."""
    ours, theirs = perfkit.Profiler(), cProfile.Profile()
    for p in (ours, theirs):
        p.enable()
        sum(range(10))
        p.disable()
    for target in (tmp_path / "missing" / "out.prof", tmp_path, f"{tmp_path}/..", ""):
        errors = []
        for p in (ours, theirs):
            with pytest.raises(OSError) as info:
                p.dump_stats(target)
            errors.append(info.value)
        assert type(errors[0]) is type(errors[1]) and errors[0].errno == errors[1].errno, (target, errors)
        assert errors[0].filename == str(target)
    for target in (tmp_path / "none.prof", tmp_path):
        with pytest.raises(OSError) as theirs_info:
            pstats.Stats(str(target))
        with pytest.raises(OSError) as info:
            perfkit.load(target)
        assert type(info.value) is type(theirs_info.value), target
        assert "cannot read" in str(info.value) and str(target) in str(info.value)
    # A path no system call takes: a ValueError, as Python's own check raises.
    with pytest.raises(ValueError):
        theirs.dump_stats(f"{tmp_path}/a\0b.prof")
    with pytest.raises(ValueError):
        ours.dump_stats(f"{tmp_path}/a\0b.prof")


def test_dump_stats_writes_pstats_file(tmp_path):
    cp = _cprofile_summary()
    p = perfkit.Profiler()
    with gc_disabled():
        p.runcall(_body)
    out = tmp_path / "api.prof"
    p.dump_stats(out)
    assert_same_counts(cp, summarize(pstats.Stats(str(out)).stats))
    p.dump_stats(str(tmp_path / "as-str.prof"))
    assert summarize(pstats.Stats(str(tmp_path / "as-str.prof")).stats).funcs == cp.funcs
    assert perfkit.load(out).exact is True


@sensitive
def test_python_frames_mode_has_no_c_rows():
    prog = program("ccalls")
    prog.main()
    cp = run_cprofile(prog.main)
    p = perfkit.Profiler(builtins=False)
    with gc_disabled():
        p.runcall(prog.main)
    pk = summarize(pstats.Stats(p).stats)
    assert [k for k in pk.funcs if k[0] == "~"] == []
    assert_same_python_counts(summarize(cp.stats), pk)


@sensitive
def test_python_frames_mode_sees_class_calls_in_every_session():
    # 3.13 switches call sites off for the rest of a session once they prove
    # not to call classes; a later session must start from a clean slate.
    prog = program("ccalls")
    prog.main()
    want = summarize(run_cprofile(prog.main).stats)
    for _ in range(3):
        p = perfkit.Profiler(builtins=False)
        with gc_disabled():
            p.runcall(prog.main)
        got = summarize(pstats.Stats(p).stats)
        assert_same_python_counts(want, got)
        assert any(k[2] == "__init__" for k in got.funcs)


# -- perfkit.profile -----------------------------------------------------------------------


@sensitive
def test_profile_as_context_manager_writes_file(tmp_path):
    cp = _cprofile_summary()
    out = tmp_path / "ctx.prof"
    with gc_disabled(), perfkit.profile(out) as p:
        was_enabled = p.enabled
        _body()
    assert isinstance(p, perfkit.Profiler)
    assert was_enabled and not p.enabled
    assert out.exists()
    assert_same_counts(cp, summarize(pstats.Stats(str(out)).stats))


@sensitive
def test_profile_context_manager_without_file(tmp_path, capsys):
    with perfkit.profile() as p:
        _body()
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""
    assert any(k[2] == "fib" for k in pstats.Stats(p).stats)


@sensitive
def test_profile_context_manager_prints(capsys):
    with perfkit.profile(print_stats=5, sort="calls"):
        _body()
    out = capsys.readouterr().out
    assert "Ordered by: call count" in out
    assert re.search(r"List reduced from \d+ to 5 due to restriction <5>", out)


@sensitive
def test_profile_bare_decorator_accumulates():
    cp = _cprofile_summary(times=2)
    decorated = perfkit.profile(_body)
    with gc_disabled():
        assert decorated() is None
        assert decorated() is None
    assert_same_counts(cp, summarize(pstats.Stats(decorated.profiler).stats))


@sensitive
def test_profile_bare_decorator_syntax_returns_value():
    @perfkit.profile
    def triple(x):
        return 3 * x

    assert triple(4) == 12
    assert triple(x=5) == 15
    row = [v for k, v in pstats.Stats(triple.profiler).stats.items() if k[2] == "triple"]
    assert [(cc, nc) for cc, nc, *_ in row] == [(2, 2)]


def test_profile_bare_decorator_keeps_function_metadata():
    def documented(x):
        """Doc of documented."""
        return x

    bare = perfkit.profile(documented)
    with_args = perfkit.profile(builtins=False)(documented)
    for wrapped in (bare, with_args):
        assert wrapped.__name__ == "documented"
        assert wrapped.__doc__ == "Doc of documented."
        assert wrapped.__wrapped__ is documented


@sensitive
def test_profile_decorator_on_methods():
    class Counter:
        def __init__(self):
            self.n = 0

        @perfkit.profile
        def bump_bare(self, k=1):
            self.n += k
            return self.n

        @perfkit.profile(builtins=False)
        def bump_args(self, k=1):
            self.n += k
            return self.n

    c = Counter()
    assert c.bump_args(2) == 2
    assert c.bump_bare(3) == 5
    assert c.n == 5


@sensitive
def test_profile_decorator_with_arguments_writes_each_call(tmp_path):
    prog = program("ccalls")
    prog.main()
    cp = summarize(run_cprofile(prog.main).stats)
    out = tmp_path / "deco.prof"
    decorated = perfkit.profile(out, builtins=False)(prog.main)
    with gc_disabled():
        decorated()
    assert out.exists()
    pk = summarize(pstats.Stats(str(out)).stats)
    assert_same_python_counts(cp, pk)
    out.unlink()
    with gc_disabled():
        decorated()
    doubled = summarize(pstats.Stats(str(out)).stats)
    assert {k: v[1] for k, v in doubled.funcs.items()} == {k: 2 * v[1] for k, v in pk.funcs.items()}


@sensitive
def test_profile_decorator_recursive_function_counts_once():
    prog = program("recursion")

    @perfkit.profile
    def countdown(n):
        return 0 if n == 0 else 1 + countdown(n - 1)

    assert countdown(6) == 6
    stats = pstats.Stats(countdown.profiler).stats
    row = [v for k, v in stats.items() if k[2] == "countdown"]
    assert [(cc, nc) for cc, nc, *_ in row] == [(1, 7)]
    assert [k for k in stats if is_profiler_key(k)] == [], "perfkit's wrapper frames show up as rows"
    assert prog.fact(3) == 6


# -- perfkit.run / runctx -----------------------------------------------------------------


@sensitive
@pytest.mark.parametrize("sort", [-1, "calls", "cumulative"])
def test_run_prints_like_cprofile(monkeypatch, capsys, sort):
    import __main__

    monkeypatch.setattr(__main__, "_perfkit_test_body", _body, raising=False)
    _body()
    cProfile.run("_perfkit_test_body()", sort=sort)
    want = capsys.readouterr().out
    assert perfkit.run("_perfkit_test_body()", sort=sort) is None
    got = capsys.readouterr().out
    assert _rows(got) and _rows(got) == _rows(want)
    assert _ordered_by(got) == _ordered_by(want)


@sensitive
def test_run_writes_file(monkeypatch, tmp_path, capsys):
    import __main__

    monkeypatch.setattr(__main__, "_perfkit_test_body", _body, raising=False)
    _body()
    cprof, pprof = tmp_path / "c.prof", tmp_path / "p.prof"
    with gc_disabled():
        cProfile.run("_perfkit_test_body()", str(cprof))
        perfkit.run("_perfkit_test_body()", str(pprof))
    assert capsys.readouterr().out == ""
    assert_same_counts(summarize(pstats.Stats(str(cprof)).stats), summarize(pstats.Stats(str(pprof)).stats))


@sensitive
def test_runctx_prints_and_writes(tmp_path, capsys):
    ns = {"body": _body}
    _body()
    cProfile.runctx("body()", ns, {}, sort="calls")
    want = capsys.readouterr().out
    perfkit.runctx("body()", ns, {}, sort="calls")
    got = capsys.readouterr().out
    assert _rows(got) and _rows(got) == _rows(want)
    out = tmp_path / "ctx.prof"
    perfkit.runctx("body()", ns, {}, str(out))
    assert capsys.readouterr().out == ""
    assert any(k[2] == "fib" for k in pstats.Stats(str(out)).stats)


@sensitive
def test_run_statement_calling_sys_exit(tmp_path):
    out = tmp_path / "exit.prof"
    perfkit.runctx("import sys\nbody()\nsys.exit(0)", {"body": _body}, None, str(out))
    assert any(k[2] == "fib" for k in pstats.Stats(str(out)).stats)


# -- two profilers -------------------------------------------------------------------------


@sensitive
def test_second_perfkit_profiler_is_refused():
    first, second = perfkit.Profiler(), perfkit.Profiler()
    first.enable()
    try:
        with pytest.raises(RuntimeError, match=r"(?i)another perfkit profiler|already"):
            second.enable()
        assert not second.enabled
        # The convenience forms run the code unrecorded, with a warning: a
        # program must not fail for being profiled (`perfkit record` around it).
        with pytest.warns(RuntimeWarning, match="cannot record here"), perfkit.profile():
            pass
        RECURSION.fact(4)  # the first one still records
    finally:
        first.disable()
    assert any(k[2] == "fact" for k in pstats.Stats(first).stats)
    # Afterwards both work normally.
    cp = _cprofile_summary()
    with gc_disabled():
        second.runcall(_body)
    assert_same_counts(cp, summarize(pstats.Stats(second).stats))
    third = perfkit.Profiler()
    with gc_disabled():
        third.runcall(_body)
    assert_same_counts(cp, summarize(pstats.Stats(third).stats))


@sensitive
def test_perfkit_refused_while_cprofile_runs():
    cp = cProfile.Profile()
    pk = perfkit.Profiler()
    cp.enable()
    try:
        with pytest.raises(RuntimeError, match=r"(?i)profil"):
            pk.enable()
        assert not pk.enabled
    finally:
        cp.disable()
    # Both still work normally.
    want = _cprofile_summary()
    with gc_disabled():
        pk.runcall(_body)
    assert_same_counts(want, summarize(pstats.Stats(pk).stats))
    assert_same_counts(want, _cprofile_summary())


@sensitive
def test_cprofile_refused_while_perfkit_runs():
    # From 3.12 cProfile finds sys.monitoring's profiler slot taken (ValueError);
    # before, perfkit's audit hook refuses the sys.setprofile that would
    # silently remove its hook (RuntimeError).
    pk = perfkit.Profiler()
    cp = cProfile.Profile()
    pk.enable()
    try:
        with pytest.raises((ValueError, RuntimeError)):
            cp.enable()
        if sys.version_info < (3, 12):
            with pytest.raises(RuntimeError, match="perfkit is profiling"):
                sys.setprofile(lambda *a: None)
        RECURSION.fact(4)
    finally:
        pk.disable()
    assert sys.getprofile() is None
    fact = [v for k, v in pstats.Stats(pk).stats.items() if k[2] == "fact"]
    assert fact and fact[0][1] == 4  # fact(4) .. fact(1): every call still recorded
    # The same cProfile object, and perfkit, work afterwards.
    want = _cprofile_summary()
    with gc_disabled():
        cp.enable()
        _body()
        cp.disable()
    cp.create_stats()
    assert_same_counts(want, summarize(cp.stats))
    with gc_disabled():
        again = perfkit.Profiler()
        again.runcall(_body)
    assert_same_counts(want, summarize(pstats.Stats(again).stats))


@sensitive
@pytest.mark.parametrize("builtins", [True, False])
def test_a_profile_with_nothing_recorded_is_still_a_table(tmp_path, capsys, builtins):
    # cProfile's tables always hold its own disable; pstats refuses an empty
    # one (TypeError from print_stats, Stats(prof), Stats(file)). With nothing
    # of the program's recorded, perfkit's disable is the one row.
    with perfkit.Profiler(builtins=builtins) as prof:
        pass
    prof.print_stats()
    assert "1 function calls" in capsys.readouterr().out
    (key,) = pstats.Stats(prof).stats
    assert key == ("~", 0, "<method 'disable' of 'perfkit.Profiler' objects>")
    path = tmp_path / "empty.prof"
    prof.dump_stats(path)
    assert list(pstats.Stats(str(path)).stats) == [key]
    r = run_cli("stats", path)
    assert r.returncode == 0 and "perfkit.Profiler" in r.stdout, r.stderr
    # C work alone, in Python-frames mode, records nothing either.
    with perfkit.profile(print_stats=5, builtins=False):
        sum(range(10))
    assert "1 function calls" in capsys.readouterr().out


def test_profile_decorates_a_coroutine_function():
    import asyncio
    import inspect

    def work():
        return sum(range(100))

    @perfkit.profile
    async def handler(n):
        await asyncio.sleep(0)
        return work() + n

    assert inspect.iscoroutinefunction(handler)
    assert asyncio.run(handler(1)) == 4951
    stats = pstats.Stats(handler.profiler).stats
    (row,) = [v for k, v in stats.items() if k[2] == "handler"]
    assert row[1] == 2 and row[3] > 0, (
        row
    )  # started, then resumed after the await: two calls, as cProfile counts
    (work_row,) = [v for k, v in stats.items() if k[2] == "work"]
    assert [k[2] for k in work_row[4]] == ["handler"]


def test_enable_takes_cprofiles_keywords():
    def f():
        return len([1, 2])

    # As cProfile: enable(builtins=False) before recording switches the mode.
    prof = perfkit.Profiler()
    prof.enable(subcalls=True, builtins=False)
    f()
    prof.disable()
    names = {k[2] for k in pstats.Stats(prof).stats}
    assert "f" in names and not any("len" in n for n in names), names
    # One recording has one mode: switching later is refused until clear().
    with pytest.raises(ValueError, match="clear"):
        prof.enable(builtins=True)
    prof.enable(builtins=False)  # the same mode goes on
    prof.disable()
    prof.clear()
    prof.enable(builtins=True)
    f()
    prof.disable()
    assert any("len" in k[2] for k in pstats.Stats(prof).stats)


def test_profiled_coroutines_awaited_together():
    # helper-42: overlapping calls of one decorated coroutine lost all but the
    # first to end; two decorated coroutines at once raised RuntimeError.
    import asyncio

    def busy():
        return sum(range(1000))

    @perfkit.profile
    async def same(n):
        await asyncio.sleep(0.01 * n)
        return busy()

    @perfkit.profile
    async def other():
        await asyncio.sleep(0.01)
        return "other"

    async def main():
        return await asyncio.gather(same(1), same(3), other())

    # `other` starts while `same` records: it runs unrecorded, and says so.
    with pytest.warns(RuntimeWarning, match="cannot record here"):
        assert asyncio.run(main()) == [499500, 499500, "other"]
    stats = pstats.Stats(same.profiler).stats
    (busy_row,) = [v for k, v in stats.items() if k[2] == "busy"]
    assert busy_row[1] == 2  # both calls, recorded by the one recording they shared


def test_a_profiler_refuses_pickling_with_a_hint():
    # A @perfkit.profile function sent to another process by value (defined
    # in a notebook) failed on "cannot pickle 'perfkit._native.Session'".
    import pickle

    @perfkit.profile
    def task(x):
        return x

    for thing in (perfkit.Profiler(), task):
        with pytest.raises(TypeError, match="profile inside it"):
            __import__("cloudpickle").dumps(thing)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(perfkit.Profiler())


@pytest.mark.parametrize("module", ["cProfile", "profile"])
def test_load_keeps_a_foreign_files_table(tmp_path, module):
    # helper-50: load() of a cProfile file rebuilt stats_dict() and dump()
    # from the tree inferred for it (fib's 36 primitive calls of 2,220 came
    # back as 2,220 of 2,220); the file's own table is what pstats reads.
    import profile

    src = tmp_path / "fib.py"
    src.write_text("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\nfib(15)\n")
    path = tmp_path / "foreign.prof"
    prof = {"cProfile": cProfile, "profile": profile}[module].Profile()
    code = compile(src.read_text(), str(src), "exec")
    namespace = {"__name__": "__main__"}
    prof.runctx(code, namespace, namespace)
    prof.dump_stats(str(path))

    def plain(table):
        # `profile` keys the code it ran by the code object; perfkit reads
        # it as a label.
        def key(k):
            return (
                k if isinstance(k[2], str) and not k[2].startswith("<code object") else (k[0], k[1], "code")
            )

        return {key(k): (*v[:4], {key(c): e for c, e in v[4].items()}) for k, v in table.items()}

    expected = plain(pstats.Stats(str(path)).stats)
    loaded = perfkit.load(path)
    assert not loaded.exact
    assert plain(loaded.stats_dict()) == expected
    again = tmp_path / "again.prof"
    loaded.dump(again)
    assert plain(pstats.Stats(str(again)).stats) == expected
    fib = next(k for k in expected if k[2] == "fib")
    assert expected[fib][0] < expected[fib][1]  # (the case that showed it: recursion)


def test_a_decorated_async_partial_inside_a_recording_warns_and_runs():
    # helper-56: the warning looked for the partial's __code__ and raised
    # AttributeError instead of running the coroutine.
    import asyncio
    import functools

    async def work(x, y):
        return x + y

    decorated = perfkit.profile()(functools.partial(work, y=1))
    outer = perfkit.Profiler()
    outer.enable()
    try:
        with pytest.warns(RuntimeWarning, match="cannot record here") as caught:
            assert asyncio.run(decorated(41)) == 42
    finally:
        outer.disable()
    assert caught[0].filename == __file__


def _item(i):
    return i * 2


def _numbers(n):
    for i in range(n):
        yield _item(i)


def _consumed(i):
    return i + 1


def _program_rows(stats: dict, names: set) -> dict:
    return {k[2]: v[:2] for k, v in stats.items() if k[0] == __file__ and k[2] in names}


def _echo(received: list):
    try:
        while True:
            received.append((yield len(received)))
    except KeyError:
        yield "caught"
    finally:
        received.append("closed")


async def _async_echo(received: list):
    try:
        while True:
            received.append((yield len(received)))
    except KeyError:
        yield "caught"
    finally:
        received.append("closed")


@sensitive  # generator frames' resumptions, seen by each CPython's hook
def test_profile_decorates_a_generator_function_for_its_whole_iteration(tmp_path):
    """A generator's body runs after the call returns: the decorator records
    from its first resumption to its end (or close), as cProfile enabled
    around the loop that consumes it sees it. It recorded nothing."""
    import inspect

    def consume(gen):
        return [_consumed(x) for x in gen]

    names = {"_numbers", "_item", "_consumed", "_echo"}
    want = _program_rows(run_cprofile(lambda: consume(_numbers(50))).stats, names)
    assert want["_numbers"] == (51, 51) and want["_item"] == (50, 50)
    decorated = perfkit.profile(tmp_path / "gen.prof")(_numbers)
    assert inspect.isgeneratorfunction(decorated)
    with gc_disabled():
        assert consume(decorated(50)) == consume(_numbers(50))
    assert _program_rows(pstats.Stats(str(tmp_path / "gen.prof")).stats, names) == want

    # send(), throw() and close() reach the generator itself.
    def drive(echo):
        received = []
        g = echo(received)
        out = [next(g), g.send("a"), g.throw(KeyError)]
        g.close()
        return out, received

    want = _program_rows(run_cprofile(lambda: drive(_echo)).stats, names)
    assert want["_echo"][1] == 4  # started, resumed by send, throw and close
    decorated = perfkit.profile(_echo)
    with gc_disabled():
        assert drive(decorated) == drive(_echo) == ([0, 1, "caught"], ["a", "closed"])
    assert _program_rows(pstats.Stats(decorated.profiler).stats, names) == want


@sensitive
def test_profile_decorates_an_async_generator_function_for_its_whole_iteration():
    import asyncio
    import inspect

    async def ticks(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield _item(i)

    async def consume(agen):
        return [_consumed(x) async for x in agen]

    names = {"ticks", "_item", "_consumed", "_async_echo"}
    want = _program_rows(run_cprofile(lambda: asyncio.run(consume(ticks(5)))).stats, names)
    assert want["_item"] == (5, 5)
    decorated = perfkit.profile(ticks)
    assert inspect.isasyncgenfunction(decorated)
    with gc_disabled():
        assert asyncio.run(consume(decorated(5))) == [1, 3, 5, 7, 9]
    assert _program_rows(pstats.Stats(decorated.profiler).stats, names) == want

    # asend(), athrow() and aclose() reach the generator itself.
    async def drive(echo):
        received = []
        g = echo(received)
        out = [await g.__anext__(), await g.asend("a"), await g.athrow(KeyError)]
        await g.aclose()
        return out, received

    want = _program_rows(run_cprofile(lambda: asyncio.run(drive(_async_echo))).stats, names)
    assert "_async_echo" in want
    decorated = perfkit.profile(_async_echo)
    with gc_disabled():
        assert asyncio.run(drive(decorated)) == ([0, 1, "caught"], ["a", "closed"])
    assert _program_rows(pstats.Stats(decorated.profiler).stats, names) == want


def test_profile_refuses_a_file_it_could_not_write_before_the_code_runs(tmp_path):
    """A profile that could not be written is said when `perfkit.profile` is
    made, with the OSError cProfile's dump_stats raises for that path: found
    when the first call ended, it took the place of that call's result."""
    theirs = cProfile.Profile()
    ran = []
    for target in (tmp_path / "missing" / "out.prof", tmp_path, ""):
        with pytest.raises(OSError) as expected:
            theirs.dump_stats(target)
        with pytest.raises(OSError) as info:

            @perfkit.profile(target)
            def work():
                ran.append(1)

        assert type(info.value) is type(expected.value) and info.value.errno == expected.value.errno
        assert info.value.filename == str(target) and "perfkit.profile" in str(info.value)
        with pytest.raises(type(expected.value)), perfkit.profile(target):
            ran.append(2)
    assert ran == []
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        if not os.access(readonly, os.W_OK):  # (root writes anywhere)
            with pytest.raises(PermissionError):
                perfkit.profile(readonly / "out.prof")
    finally:
        readonly.chmod(0o700)
    # What can be written still is, when the block ends.
    with perfkit.profile(tmp_path / "ok.prof"):
        sum(range(10))
    assert pstats.Stats(str(tmp_path / "ok.prof")).total_calls > 0


@sensitive
def test_one_decorated_function_called_from_many_threads_records_every_call(tmp_path):
    """Threads calling one `@perfkit.profile` function at once (a thread
    pool's tasks): the first call in flight starts the recording, the last
    one stops and writes it. The count of calls in flight was not thread-safe:
    calls were lost (up to 60 % of 24,000), a recording stopped under a call
    still running, and two enabling at once warned "cannot record here
    (Already mutably borrowed)"."""
    import threading
    import warnings

    out = tmp_path / "threads.prof"

    @perfkit.profile(out)
    def task(i):
        return sum(range(i % 50))

    per_thread, n_threads = 2000, 8

    def worker():
        for i in range(per_thread):
            task(i)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # (thread switches inside the wrapper, as on a busy machine)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            threads = [threading.Thread(target=worker) for _ in range(n_threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(old)
    assert not task.profiler.enabled
    for stats in (pstats.Stats(task.profiler), pstats.Stats(str(out))):
        calls = {k[2]: v[0] for k, v in stats.stats.items()}
        assert calls["task"] == per_thread * n_threads
        assert calls["<built-in method builtins.sum>"] == per_thread * n_threads
        # The lock that counts calls in flight is not the program's: what
        # lock calls there are, are the threads' start and join.
        assert not any("unrecorded" in name for name in calls), sorted(calls)
        lock_calls = sum(n for name, n in calls.items() if "_thread.lock" in name)
        assert lock_calls < per_thread, calls


@sensitive
def test_nested_and_threaded_blocks_of_one_profile_record_until_the_last_ends(tmp_path):
    """`with block:` inside `with block:` (or in several threads) records
    until the outermost ends, as the decorator's overlapping calls do: the
    inner exit stopped the recording and wrote the file, and the outer
    block's remaining work was lost."""
    import threading

    out = tmp_path / "nested.prof"
    block = perfkit.profile(out)
    with block:
        sum(range(3))
        with block:
            sum(range(4))
        assert block.profiler.enabled and not out.exists()
        sorted(range(5))
    assert not block.profiler.enabled
    calls = {k[2]: v[0] for k, v in pstats.Stats(str(out)).stats.items()}
    # (and what the check that no file is written yet calls)
    assert calls["<built-in method builtins.sum>"] == 2 and calls["<built-in method builtins.sorted>"] == 1

    inside, leave = threading.Barrier(3), threading.Event()

    def worker():
        with block:
            inside.wait()
            leave.wait()
            sorted(range(7))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    assert block.profiler.enabled
    leave.set()
    for t in threads:
        t.join()
    assert not block.profiler.enabled
    calls = {k[2]: v[0] for k, v in pstats.Stats(str(out)).stats.items()}
    assert calls["<built-in method builtins.sorted>"] == 1 + 2


def test_a_decorated_call_from_the_warning_hook_does_not_hang():
    """perfkit.profile's lock is re-entrant: a warning hook (or a signal
    handler) that calls the decorated function while this thread holds the
    lock gets its call, not a deadlock."""
    import threading
    import warnings

    @perfkit.profile()
    def step(x):
        return x + 1

    seen = []

    def hook(message, category, filename, lineno, file=None, line=None):
        seen.append((str(message), step(41)))

    other = perfkit.Profiler()
    result = []

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = hook
            other.enable()
            try:
                result.append(step(1))
            finally:
                other.disable()

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "the decorated call from the warning hook hung"
    assert result == [2] and len(seen) == 1 and seen[0][1] == 42 and "cannot record here" in seen[0][0]
