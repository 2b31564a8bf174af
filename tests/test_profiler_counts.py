"""perfkit's numbers against real cProfile, run side by side in this process.

Every test here records, so every test is version-sensitive: CI runs this
file on 3.9 to 3.13, each time against that interpreter's own cProfile.
"""

from __future__ import annotations

import _thread
import cProfile
import os
import pstats
import subprocess
import sys
import textwrap
import threading
import time

import perfkit
import pytest
from conftest import (
    PROGRAMS,
    Summary,
    assert_same_counts,
    assert_same_python_counts,
    children_of,
    cprofile_in_thread,
    find_nodes,
    gc_disabled,
    is_profiler_key,
    main_thread_tree,
    node_path,
    profile_both,
    program,
    run_cprofile,
    run_perfkit,
    summarize,
    tree_counts,
)

pytestmark = pytest.mark.version_sensitive


# -- call counts ---------------------------------------------------------------------


@pytest.mark.parametrize("name", PROGRAMS)
def test_full_mode_counts_equal_cprofile(name):
    both = profile_both(program(name).main)
    assert both.cp.funcs, "cProfile recorded nothing: the comparison would be empty"
    assert_same_counts(both.cp, both.pk)


@pytest.mark.parametrize("name", PROGRAMS)
def test_python_frames_counts_equal_cprofile(name):
    both = profile_both(program(name).main, builtins=False)
    assert_same_python_counts(both.cp, both.pk)


@pytest.mark.parametrize("name", PROGRAMS)
def test_full_mode_after_python_frames_mode_counts_equal_cprofile(name):
    # On 3.13 a Python-frames recording turns off the call sites that call no
    # class; a full recording after it in the same process missed every C
    # call made at those sites.
    run_perfkit(program(name).main, builtins=False)
    both = profile_both(program(name).main, warmup=False)
    assert_same_counts(both.cp, both.pk)


@pytest.mark.parametrize("builtins", [True, False], ids=["full", "python-frames"])
def test_asyncio_program_rows_equal_cprofile(builtins):
    prog = program("asyncio_prog")
    both = profile_both(prog.main, builtins=builtins)
    mine = os.path.abspath(prog.__file__)

    def in_program(k):
        return os.path.abspath(k[0]) == mine

    cp, pk = both.cp.only(in_program), both.pk.only(in_program)
    assert {k[2] for k in cp.funcs} >= {"main", "amain", "gather_all", "step"}
    assert_same_counts(cp, pk)


def test_primitive_calls_differ_from_total_for_recursion():
    """A guard on the comparison itself: recursion makes cc != nc, on both sides."""
    both = profile_both(program("recursion").main)
    fib = next(k for k in both.cp.funcs if k[2] == "fib")
    cc, nc = both.cp.funcs[fib]
    assert cc == 1 and nc > 100
    assert both.pk.funcs.get(fib) == (cc, nc)
    # fib -> fib edge: every call but the first is recursive for that pair too.
    assert both.pk.edges.get((fib, fib)) == both.cp.edges[(fib, fib)]


def test_mutual_recursion_edge_counts():
    both = profile_both(program("mutual").main)
    keys = {k[2]: k for k in both.cp.funcs}
    for caller, callee in [
        ("is_even", "is_odd"),
        ("is_odd", "is_even"),
        ("tri_c", "tri_a"),
        ("tri_a", "tri_b"),
    ]:
        edge = (keys[caller], keys[callee])
        assert both.cp.edges[edge][0] < both.cp.edges[edge][1], "expected recursive calls on this edge"
        assert both.pk.edges.get(edge) == both.cp.edges[edge], f"{caller} -> {callee}"


def _recurse(n):
    return 0 if n == 0 else _recurse(n - 1) + 1


@pytest.mark.parametrize("builtins", [True, False])
def test_recursion_runs_as_deep_as_unprofiled(builtins):
    """Under the frame-evaluation hook (3.12+, and Python-frames mode on every
    version) each Python call is also a C call. 3.12 and 3.13 charge those to
    their C recursion budget, which used to end a recursion of ~750 calls
    (3.12) or ~5,000 (3.13) that runs unprofiled and under cProfile."""
    depth, limit = 6000, sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 500)
    try:
        assert _recurse(depth) == depth
        with perfkit.Profiler(builtins=builtins) as prof:
            assert _recurse(depth) == depth
        cp = cProfile.Profile(builtins=builtins)
        cp.enable()
        _recurse(depth)
        cp.disable()
    finally:
        sys.setrecursionlimit(limit)

    def row(stats):
        return next(v[:2] for k, v in pstats.Stats(stats).stats.items() if k[2] == "_recurse")

    assert row(prof) == row(cp) == (1, depth + 1)


@pytest.mark.parametrize(
    "builtins",
    # Full mode on 3.9-3.11 is a profile function: no C call per Python call to guard.
    [False, True] if sys.version_info >= (3, 12) else [False],
)
def test_recursion_past_the_c_stack_is_a_recursion_error(builtins):
    """A recursion deeper than the thread's C stack allows under the hook ends
    in a RecursionError that says why, not a crash (3.11 used to segfault),
    and the recording goes on. Run in a child, so a regression cannot take
    pytest down with it."""
    code = textwrap.dedent(
        f"""
        import pstats, sys, threading, perfkit
        sys.setrecursionlimit(1_000_000)
        def recurse(n):
            return 0 if n == 0 else recurse(n - 1) + 1
        out = []
        def deep():
            try:
                out.append(recurse(200_000))
            except RecursionError as e:
                out.append(str(e))
            out.append(recurse(50))
        threading.stack_size(1 << 20)
        with perfkit.Profiler(builtins={builtins}) as prof:
            t = threading.Thread(target=deep)
            t.start()
            t.join()
        print(out[0])
        print(out[1])
        print(sorted(v[1] for k, v in pstats.Stats(prof).stats.items() if k[2] == "recurse"))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    message, after, calls = run.stdout.splitlines()
    assert message.startswith("maximum recursion depth exceeded while profiling"), message
    assert "C stack" in message
    assert after == "50"
    # The refused call is not counted; the ones that ran and the later 51 are.
    (ncalls,) = eval(calls)
    assert 51 < ncalls < 200_000, calls


def test_no_profiler_rows():
    """perfkit leaves its own frames (enable, disable, __exit__, runcall, …) out."""
    prog = program("callsites")

    def own_rows(stats):
        return sorted(k for k in stats if is_profiler_key(tuple(k)))

    p = perfkit.Profiler()
    with p:
        prog.main()
    assert own_rows(p.recording().stats_dict()) == []
    p = perfkit.Profiler()
    p.runcall(prog.main)
    assert own_rows(p.recording().stats_dict()) == []
    p = perfkit.Profiler()
    p.enable()
    prog.main()
    p.disable()
    assert own_rows(p.recording().stats_dict()) == []
    with perfkit.profile() as p:
        prog.main()
    assert own_rows(p.recording().stats_dict()) == []


def test_perfkit_natives_in_the_program_are_rows():
    """Only the profiler's own API is left out: a profiled program's calls
    into perfkit's Rust core (a Parallel call waiting for its workers) are
    rows, as cProfile shows them; hidden, their time went to the caller."""
    import cProfile

    from parallel_tasks import square

    def call():
        return perfkit.Parallel(n_jobs=2, backend="processes")(perfkit.delayed(square)(x) for x in range(200))

    call()  # the pool is started outside the profiles

    def native_rows(stats):
        return {k[2] for k in stats if k[0] == "~" and "perfkit._native" in k[2]}

    cp = cProfile.Profile()
    cp.runcall(call)
    cp.create_stats()
    pk = perfkit.Profiler()
    assert pk.runcall(call) == [x * x for x in range(200)]
    expected = native_rows(cp.stats)
    assert any("next_event" in name for name in expected), expected
    assert native_rows(pk.recording().stats_dict()) == expected


# -- pstats ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mixed", *PROGRAMS])
def test_pstats_files_agree(tmp_path, name):
    """pstats.Stats on perfkit's file: the same keys and counts as on cProfile's file."""
    both = profile_both(program(name).main)
    cp_path, pk_path = tmp_path / "c.prof", tmp_path / "p.prof"
    both.cprofile.dump_stats(str(cp_path))
    both.profiler.dump_stats(pk_path)
    cp = summarize(pstats.Stats(str(cp_path)).stats)
    pk = summarize(pstats.Stats(str(pk_path)).stats)
    assert set(cp.funcs) == set(pk.funcs)
    assert_same_counts(cp, pk)


def test_a_file_name_that_is_not_utf8_is_kept_as_perfkit_reads_cprofiles(tmp_path):
    """A script in a directory whose name is not UTF-8 (Latin-1 bytes, which
    Python decodes with surrogateescape): its functions were all named
    `?:line(name)`, file and directory lost. They are named as perfkit reads
    cProfile's file of the same run, the rest of the path kept."""
    path = "/tmp/caf\udce9/mod.py"  # what os.fsdecode(b"/tmp/caf\xe9/mod.py") gives
    namespace: dict = {}
    exec(compile("def work():\n    return sum(range(10))\n", path, "exec"), namespace)  # noqa: S102 - code under a made-up file name
    both = profile_both(namespace["work"])
    cp_path, pk_path = tmp_path / "c.prof", tmp_path / "p.prof"
    both.cprofile.dump_stats(str(cp_path))
    both.profiler.dump_stats(pk_path)

    def work_keys(file):
        return [k for k in perfkit.load(file).stats_dict() if k[2] == "work"]

    (mine,) = work_keys(pk_path)
    assert mine[0].startswith("/tmp/caf") and mine[0].endswith("/mod.py")
    assert work_keys(pk_path) == work_keys(cp_path)


def test_pstats_on_profiler_objects():
    prog = program("mixed")
    prog.main()
    cp = run_cprofile(prog.main)
    pk = perfkit.Profiler()
    with gc_disabled():
        pk.enable()
        prog.main()
        pk.disable()
    cps, pks = pstats.Stats(cp), pstats.Stats(pk)
    assert_same_counts(summarize(cps.stats), summarize(pks.stats))
    own = [k for k in pks.stats if is_profiler_key(k)]
    assert own == []
    # pstats' totals: cProfile counts its own `disable` call, perfkit has none.
    assert pks.total_calls == cps.total_calls - 1
    assert pks.prim_calls == cps.prim_calls - 1


# -- the exact tree ------------------------------------------------------------------


def test_exact_tree_keeps_call_paths(tmp_path):
    prog = program("callsites")
    both = profile_both(prog.main)
    path = tmp_path / "callsites.prof"
    both.profiler.dump_stats(path)
    rec = perfkit.load(path)
    assert rec.exact is True
    funcs = [tuple(k) for k in rec.funcs()]
    _, nodes = main_thread_tree(rec)
    key = {k[2]: k for k in both.cp.funcs if k[0] == prog.__file__}
    cp_edge = both.cp.edges

    f_paths = {
        tuple(node_path(funcs, nodes, i)): nodes[i][2] for i in find_nodes(funcs, nodes, "f", prog.__file__)
    }
    assert f_paths == {
        ("main", "a", "f"): cp_edge[(key["a"], key["f"])][1],
        ("main", "b", "f"): cp_edge[(key["b"], key["f"])][1],
        ("main", "a", "g", "h", "f"): cp_edge[(key["h"], key["f"])][1],
    }
    g_paths = {
        tuple(node_path(funcs, nodes, i)): nodes[i][2] for i in find_nodes(funcs, nodes, "g", prog.__file__)
    }
    assert set(g_paths) == {("main", "a", "g"), ("main", "b", "g")}
    assert g_paths[("main", "a", "g")] + g_paths[("main", "b", "g")] == both.cp.funcs[key["g"]][1]
    assert g_paths[("main", "a", "g")] == cp_edge[(key["a"], key["g"])][1]
    # h runs only below a -> g: the pstats dict cannot say so, the tree must.
    h_paths = [tuple(node_path(funcs, nodes, i)) for i in find_nodes(funcs, nodes, "h", prog.__file__)]
    assert h_paths == [("main", "a", "g", "h")]


def test_loaded_tree_equals_recorded_tree(tmp_path):
    prof = run_perfkit(program("mixed").main)
    rec = prof.recording()
    path = tmp_path / "mixed.prof"
    prof.dump_stats(path)
    loaded = perfkit.load(path)
    assert loaded.exact is True
    assert [tuple(k) for k in loaded.funcs()] == [tuple(k) for k in rec.funcs()]
    assert loaded.threads() == rec.threads()
    assert summarize(loaded.stats_dict()).funcs == summarize(rec.stats_dict()).funcs


def test_foreign_cprofile_file_is_not_exact(tmp_path):
    prog = program("callsites")
    prog.main()
    cp = run_cprofile(prog.main)
    path = tmp_path / "cprofile.prof"
    cp.dump_stats(str(path))
    rec = perfkit.load(path)
    assert rec.exact is False
    assert rec.threads(), "an inferred tree still has a thread"
    names = {k[2] for k in rec.funcs()}
    assert {"main", "a", "b", "f", "g", "h"} <= names
    # The table read back is cProfile's own.
    assert summarize(rec.stats_dict()).funcs == summarize(cp.stats).funcs


@pytest.mark.parametrize("name", ["mixed", *PROGRAMS])
def test_tree_and_table_agree(name):
    """The pstats dict perfkit derives is the one its own tree implies."""
    prof = run_perfkit(program(name).main)
    rec = prof.recording()
    funcs = [tuple(k) for k in rec.funcs()]
    _, nodes = main_thread_tree(rec)
    from_tree = tree_counts(funcs, nodes)
    table = summarize(rec.stats_dict())
    assert_same_counts(Summary(from_tree.funcs, from_tree.edges), table)


# -- times -----------------------------------------------------------------------------


@pytest.mark.parametrize("builtins", [True, False], ids=["full", "python-frames"])
@pytest.mark.parametrize("name", ["mixed", "recursion", "generators", "coroutines", "exceptions"])
def test_times_are_consistent(name, builtins):
    prof = run_perfkit(program(name).main, builtins=builtins)
    rec = prof.recording()
    _, nodes = main_thread_tree(rec)
    kids = children_of(nodes)
    problems = []
    funcs = [tuple(k) for k in rec.funcs()]
    for i, (func, _parent, calls, own, total) in enumerate(nodes):
        if i == 0:
            continue
        label = "/".join(node_path(funcs, nodes, i))
        below = sum(nodes[c][4] for c in kids[i])
        if calls < 1:
            problems.append(f"{label}: {calls} calls")
        if own < 0 or own > total:
            problems.append(f"{label}: own {own} ns, total {total} ns")
        if below > total:
            problems.append(f"{label}: children {below} ns > total {total} ns")
        if own + below != total:
            problems.append(f"{label}: own {own} + children {below} != total {total}")
    assert not problems, "\n".join(problems)

    stats = rec.stats_dict()
    for key, (cc, nc, tt, ct, callers) in stats.items():
        assert 0 <= tt <= ct + 1e-9, f"{key}: tottime {tt} > cumtime {ct}"
        assert 0 <= cc <= nc
    # For a function that never recurses, its callees' time from it fits in its own cumtime.
    for key, (cc, nc, _tt, ct, _callers) in stats.items():
        if cc != nc:
            continue
        from_key = sum(
            v[3] for callee, (_, _, _, _, cs) in stats.items() for caller, v in cs.items() if caller == key
        )
        assert from_key <= ct + 1e-6, f"{key}: callees' cumtime {from_key} > cumtime {ct}"


def test_total_time_matches_wall_time():
    prog = program("recursion")

    def napper():
        for _ in range(3):
            time.sleep(0.03)
        prog.fib(16)

    napper()
    prof = perfkit.Profiler()
    t0 = time.perf_counter()
    prof.enable()
    napper()
    prof.disable()
    wall = time.perf_counter() - t0
    rec = prof.recording()
    _, nodes = main_thread_tree(rec)
    top = sum(nodes[i][4] for i in children_of(nodes)[0]) / 1e9
    assert 0.9 * wall <= top <= wall + 1e-4, (top, wall)
    assert abs(rec.duration - wall) <= 0.1 * wall + 0.005, (rec.duration, wall)
    stats = pstats.Stats(prof)
    assert 0.9 * wall <= stats.total_tt <= wall + 1e-4, (stats.total_tt, wall)
    napper_key = next(k for k in stats.stats if k[2] == "napper")
    assert 0.9 * wall <= stats.stats[napper_key][3] <= wall + 1e-4
    sleep_key = next(k for k in stats.stats if k[0] == "~" and "sleep" in k[2])
    assert 0.085 <= stats.stats[sleep_key][3] <= wall


# -- threads ---------------------------------------------------------------------------


def _thread_by_name(rec, name):
    found = [t for t in rec.threads() if t[0] == name]
    assert len(found) == 1, f"thread {name!r} in {[t[0] for t in rec.threads()]}"
    return found[0]


def _compare_thread(rec, thread_name, prog, k, builtins):
    funcs = [tuple(x) for x in rec.funcs()]
    _, _tid, pid, nodes = _thread_by_name(rec, thread_name)
    assert pid == os.getpid()
    roots = find_nodes(funcs, nodes, "work", prog.__file__)
    assert roots, f"no call of work() recorded in {thread_name}"
    pk = tree_counts(funcs, nodes, roots)
    cp = summarize(cprofile_in_thread(prog.work, k))
    if builtins:
        assert_same_counts(cp, pk)
    else:
        assert_same_python_counts(cp, pk)
    return cp


@pytest.mark.parametrize("builtins", [True, False], ids=["full", "python-frames"])
def test_threads_started_after_enable(builtins):
    prog = program("threads_prog")
    params = [3, 5]
    for k in params:
        prog.work(k)
    prof = perfkit.Profiler(builtins=builtins)
    with gc_disabled():
        prof.enable()
        threads = [threading.Thread(target=prog.work, args=(k,), name=f"worker-{k}") for k in params]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        prof.disable()
    rec = prof.recording()
    names = [t[0] for t in rec.threads()]
    assert "worker-3" in names and "worker-5" in names
    expected = Summary({}, {})
    for k in params:
        cp = _compare_thread(rec, f"worker-{k}", prog, k, builtins)
        for key, (cc, nc) in cp.funcs.items():
            old = expected.funcs.get(key, (0, 0))
            expected.funcs[key] = (old[0] + cc, old[1] + nc)
    # The merged table: the thread functions' counts are the sums over the threads.
    merged = summarize(prof.recording().stats_dict())
    mine = os.path.abspath(prog.__file__)
    want = {k: v for k, v in expected.funcs.items() if os.path.abspath(k[0]) == mine}
    got = {k: v for k, v in merged.funcs.items() if os.path.abspath(k[0]) == mine}
    assert got == want


@pytest.mark.skipif(
    sys.version_info < (3, 12),
    reason="cProfile records its own thread only before 3.12 (test_threads_started_after_enable compares per thread)",
)
@pytest.mark.parametrize("builtins", [True, False], ids=["full", "python-frames"])
def test_thread_pool_rows_equal_cprofiles_which_records_every_thread_too(builtins):
    from concurrent.futures import ThreadPoolExecutor

    prog = program("threads_prog")

    def run():
        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(prog.work, [2, 3, 4, 5]))

    both = profile_both(run, builtins=builtins)
    mine = os.path.abspath(prog.__file__)

    def in_program(k):
        return os.path.abspath(k[0]) == mine

    def in_program_or_c(k):  # (C functions: which of the program's calls went through one)
        return k[0] == "~" or in_program(k)

    work = next(k for k in both.cp.funcs if in_program(k) and k[2] == "work")
    assert both.cp.funcs[work][1] == 4, "cProfile missed the pool's threads"
    if builtins:
        assert_same_counts(both.cp.only(in_program), both.pk.only(in_program))
    else:
        assert_same_python_counts(both.cp.only(in_program_or_c), both.pk.only(in_program))


def test_a_thread_started_while_recording_has_no_row_of_perfkits_hook():
    """perfkit names each thread started while it records through
    threading.setprofile, so threading calls sys.setprofile(perfkit's hook)
    first thing in every new thread. On 3.12+ that C call was recorded:
    a `<built-in method sys.setprofile>` row, a call per thread, that
    cProfile's table (which records every thread there too) has not."""

    def run():
        threads = [threading.Thread(target=sum, args=(range(10),)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    both = profile_both(run)

    def setprofile_rows(summary):
        return {k: v for k, v in summary.funcs.items() if "setprofile" in k[2]}

    assert setprofile_rows(both.pk) == setprofile_rows(both.cp)


@pytest.mark.parametrize("builtins", [True, False], ids=["full", "python-frames"])
def test_thread_running_before_enable(builtins):
    prog = program("threads_prog")
    prog.work(4)
    waiting, go = threading.Event(), threading.Event()

    def early():
        waiting.set()
        go.wait()
        prog.work(4)

    t = threading.Thread(target=early, name="early-worker")
    t.start()
    assert waiting.wait(10)
    time.sleep(0.01)
    prof = perfkit.Profiler(builtins=builtins)
    with gc_disabled():
        prof.enable()
        go.set()
        t.join()
        prof.disable()
    rec = prof.recording()
    _compare_thread(rec, "early-worker", prog, 4, builtins)


def test_main_thread_is_named():
    prof = run_perfkit(program("callsites").main)
    name, _nodes = main_thread_tree(prof.recording())
    assert name == threading.main_thread().name


@pytest.mark.parametrize("builtins", [True, False])
def test_threads_that_reuse_an_ident_get_their_own_names(builtins):
    # A thread that ends leaves its ident to the next one started: each
    # recording must carry the name of the thread it recorded (helper-39:
    # "alpha", "alpha", "alpha" for alpha, beta and gamma).
    def work():
        return sum(range(100))

    go = threading.Event()
    first = threading.Thread(target=lambda: (go.wait(), work()), name="alpha")
    first.start()
    prof = perfkit.Profiler(builtins=builtins)
    prof.enable()
    go.set()
    first.join()
    for name in ("beta", "gamma"):
        t = threading.Thread(target=work, name=name)
        t.start()
        t.join()
    # A thread threading does not know, on the same ident: not "gamma".
    done = threading.Event()
    _thread.start_new_thread(lambda: (work(), done.set()), ())
    done.wait()
    time.sleep(0.05)
    prof.disable()
    names = [name for name, *_ in prof.recording().threads()]
    named = [n for n in names if not n.startswith("Thread-")]
    assert sorted(named) == sorted([threading.main_thread().name, "alpha", "beta", "gamma"]), names


@pytest.mark.parametrize("builtins", [True, False])
def test_a_programs_thread_profile_hook_outlives_the_recording(builtins):
    def hook(frame, event, arg):
        return None

    before = threading._profile_hook
    try:
        with perfkit.Profiler(builtins=builtins):
            threading.setprofile(hook)
        # The program's hook, set while perfkit recorded, is not replaced by the one from before.
        assert threading._profile_hook is hook
        seen = []
        t = threading.Thread(target=lambda: seen.append(sys.getprofile()))
        t.start()
        t.join()
        assert seen == [hook]
    finally:
        threading.setprofile(before)


# -- clocks ----------------------------------------------------------------------------


def _sleep_in_thread(clock):
    def sleeper():
        time.sleep(0.2)

    prof = perfkit.Profiler(clock=clock)
    prof.enable()
    t = threading.Thread(target=sleeper, name="sleeper")
    t.start()
    t.join()
    prof.disable()
    rec = prof.recording()
    funcs = [tuple(k) for k in rec.funcs()]
    _, _, _, nodes = _thread_by_name(rec, "sleeper")
    sleeps = [i for i in find_nodes(funcs, nodes, "sleeper")]
    assert len(sleeps) == 1
    sleep_c = [i for i, n in enumerate(nodes) if i and funcs[n[0]][0] == "~" and "sleep" in funcs[n[0]][2]]
    assert len(sleep_c) == 1
    _, main_nodes = main_thread_tree(rec)
    main_total = sum(main_nodes[i][4] for i in children_of(main_nodes)[0])
    return nodes[sleeps[0]][4] / 1e9, nodes[sleep_c[0]][4] / 1e9, main_total / 1e9


def test_cpu_clock_ignores_sleep_wall_clock_counts_it():
    wall_fn, wall_sleep, wall_main = _sleep_in_thread("wall")
    cpu_fn, cpu_sleep, cpu_main = _sleep_in_thread("cpu")
    assert 0.19 <= wall_sleep <= wall_fn < 1.0
    assert wall_main >= 0.19, "the main thread waited in join() for the sleep"
    assert cpu_sleep < 0.02 and cpu_fn < 0.02
    assert cpu_main < 0.05


def _busy_until(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(200))
        time.sleep(0.001)


def _short_work() -> int:
    return sum(i * i for i in range(2000))


@pytest.mark.parametrize("builtins", [True, False], ids=["full", "python-frames"])
def test_threads_new_leaves_out_the_threads_already_running(builtins):
    # helper-47: in a Jupyter kernel every profile also recorded the kernel's
    # own threads (epoll.poll on top, 4x the cell's time). threads="new"
    # records the enabling thread and the threads started while recording.
    stop = threading.Event()
    before = threading.Thread(target=_busy_until, args=(stop,), name="already-running")
    before.start()
    try:
        recordings = {}
        for threads in ("new", "all"):
            prof = perfkit.Profiler(builtins=builtins, threads=threads)
            with prof:
                time.sleep(0.05)
                started = threading.Thread(target=_short_work, name=f"started-{threads}")
                started.start()
                started.join()
                _short_work()
            recordings[threads] = {t[0] for t in prof.recording().threads()}
    finally:
        stop.set()
        before.join()
    assert recordings["new"] == {"MainThread", "started-new"}
    assert recordings["all"] == {"MainThread", "started-all", "already-running"}


def test_a_thread_started_while_recording_is_recorded_whatever_ident_it_reuses():
    stop = threading.Event()
    ended = threading.Thread(target=_busy_until, args=(stop,), name="ends-while-recording")
    ended.start()
    prof = perfkit.Profiler(threads="new")
    with prof:
        stop.set()
        ended.join()
        for i in range(5):  # (one of them likely takes the ended thread's ident)
            t = threading.Thread(target=_short_work, name=f"later-{i}")
            t.start()
            t.join()
    names = {t[0] for t in prof.recording().threads()}
    assert names == {"MainThread", *(f"later-{i}" for i in range(5))}


def _kernel_loop(stop: threading.Event) -> None:
    _busy_until(stop)


_kernel_loop.__module__ = "ipykernel.iostream"  # (as a Jupyter kernel's IOPub thread's target)


@pytest.mark.parametrize("builtins", [True, False], ids=["full", "python-frames"])
def test_a_jupyter_kernels_own_threads_are_left_out_unless_all_are_asked_for(builtins):
    # helper-47: in a notebook every profile also recorded the kernel's
    # threads (its sockets' polling, its history): a 0.5 s cell read 2 s.
    # helper-48: leaving out every thread running at enable dropped a kept
    # pool's work too, so only the kernel's own are left out.
    stop = threading.Event()
    kernel = threading.Thread(target=_kernel_loop, args=(stop,), name="IOPub")
    pool = threading.Thread(target=_busy_until, args=(stop,), name="a-kept-pool")
    kernel.start()
    pool.start()
    try:
        seen = {}
        for threads in (None, "all", "new"):
            prof = perfkit.Profiler(builtins=builtins, threads=threads)
            with prof:
                time.sleep(0.05)
                _short_work()
            seen[threads] = {t[0] for t in prof.recording().threads()}
    finally:
        stop.set()
        kernel.join()
        pool.join()
    assert seen[None] == {"MainThread", "a-kept-pool"}
    assert seen["all"] == {"MainThread", "a-kept-pool", "IOPub"}
    assert seen["new"] == {"MainThread"}
    with pytest.raises(ValueError, match="threads must be None, 'all' or 'new'"):
        perfkit.Profiler(threads="some")


def test_a_thread_started_just_before_enable_runs_its_target():
    # helper-48: on 3.9-3.11 (full mode) enable hooks every thread, so a
    # thread still in threading's bootstrap then had its
    # sys.setprofile(threading's hook) refused by perfkit's guard against
    # other profilers, and died before running its target (over half of them
    # while another thread kept threading's lock busy).
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            threading.enumerate()

    busy = threading.Thread(target=hammer, daemon=True)
    busy.start()
    ran = []
    try:
        for i in range(60):
            t = threading.Thread(target=ran.append, args=(i,))
            t.start()
            prof = perfkit.Profiler(threads="all")
            prof.enable()
            t.join()
            prof.disable()
    finally:
        stop.set()
        busy.join()
    assert sorted(ran) == list(range(60))


def _set_own_profiler_then_wait(stop: threading.Event, errors: list) -> None:
    try:
        sys.setprofile(lambda *a: None)
        sys.setprofile(None)
    except RuntimeError as exc:
        errors.append(str(exc))
    _busy_until(stop)


def test_a_thread_left_out_may_set_its_own_profiler():
    # helper-48: on 3.9-3.11, enable hooks every thread; one the recording
    # leaves out (a Jupyter kernel's) was refused sys.setprofile as though
    # perfkit profiled it.
    stop, started = threading.Event(), threading.Event()
    errors: list = []

    def kernel_thread():
        started.wait()
        _set_own_profiler_then_wait(stop, errors)

    kernel_thread.__module__ = "ipykernel.debugger"
    t = threading.Thread(target=kernel_thread)
    t.start()
    prof = perfkit.Profiler()
    with prof:
        started.set()
        time.sleep(0.1)
        _short_work()
    stop.set()
    t.join()
    assert errors == []
    assert {name for name, *_ in prof.recording().threads()} == {"MainThread"}
