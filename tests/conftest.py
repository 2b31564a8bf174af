"""Shared helpers: run a callable under real cProfile and under perfkit, and
reduce both to comparable call counts and caller→callee edges.

Both profilers' own rows are dropped on both sides: cProfile's
``<method 'disable' of '_lsprof.Profiler' objects>`` and cProfile.py's
helpers; perfkit's own files and ``perfkit._native`` methods (which perfkit
is supposed to hide anyway; ``test_no_profiler_rows`` checks that it does).
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import importlib
import os
import signal
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import perfkit
import pytest

TESTS_DIR = Path(__file__).resolve().parent

# Started as a shell's background job (`scripts/test &`, nohup), pytest
# inherits SIGINT ignored, and so would every program the tests start, which
# the Ctrl-C tests then cannot stop. Python's own handler is what a program
# started from a terminal has (a child gets SIGINT at its default).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
PROGRAMS_DIR = TESTS_DIR / "programs"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

Key = tuple[str, int, str]
Counts = dict[Key, tuple[int, int]]  # key -> (cc, nc)
Edges = dict[tuple[Key, Key], tuple[int, int]]  # (caller, callee) -> (cc, nc)

PERFKIT_DIR = os.path.dirname(os.path.abspath(perfkit.__file__))
CPROFILE_FILE = os.path.abspath(cProfile.__file__)

# The deterministic programs of tests/programs, by module name.
PROGRAMS = [
    "recursion",
    "mutual",
    "generators",
    "coroutines",
    "exceptions",
    "ccalls",
    "classes",
    "lambdas",
    "comprehensions",
    "callsites",
    "hot_paths",
    "finalizers",
    "recursion_limit",
]


def program(name: str):
    """The module tests/programs/<name>.py, imported (once) as programs.<name>."""
    return importlib.import_module(f"programs.{name}")


def program_file(name: str) -> str:
    return program(name).__file__


def is_profiler_key(key: Key) -> bool:
    """A row that belongs to a profiler rather than to the profiled program."""
    file, _line, name = key
    if file == "~":
        return "_lsprof" in name or "perfkit" in name
    path = os.path.abspath(file)
    return path == CPROFILE_FILE or path.startswith(PERFKIT_DIR + os.sep)


@dataclass
class Summary:
    """Call counts of a pstats dict: per function (cc, nc) and per edge (cc, nc)."""

    funcs: Counts
    edges: Edges
    raw: dict = field(repr=False, default_factory=dict)

    def only(self, pred: Callable[[Key], bool]) -> Summary:
        return Summary(
            {k: v for k, v in self.funcs.items() if pred(k)},
            {e: v for e, v in self.edges.items() if pred(e[0]) and pred(e[1])},
            self.raw,
        )

    def python_only(self) -> Summary:
        return self.only(lambda k: k[0] != "~")


def summarize(stats: dict) -> Summary:
    """Reduce a pstats dict ``{key: (cc, nc, tt, ct, {caller: (nc, cc, tt, ct)})}``."""
    funcs: Counts = {}
    edges: Edges = {}
    for key, (cc, nc, _tt, _ct, callers) in stats.items():
        key = tuple(key)
        if is_profiler_key(key):
            continue
        funcs[key] = (cc, nc)
        for caller, edge in callers.items():
            caller = tuple(caller)
            if is_profiler_key(caller):
                continue
            enc, ecc = edge[0], edge[1]
            edges[(caller, key)] = (ecc, enc)
    return Summary(funcs, edges, stats)


def fmt_key(key: Key) -> str:
    file, line, name = key
    if file == "~":
        return name
    return f"{os.path.basename(file)}:{line}({name})"


def _label(k) -> str:
    if isinstance(k, tuple) and len(k) == 2 and all(isinstance(x, tuple) for x in k):
        return f"{fmt_key(k[0])} -> {fmt_key(k[1])}"
    return fmt_key(k)


def diff_counts(expected: dict[Any, Any], got: dict[Any, Any], what: str) -> list[str]:
    """One line per key whose value differs (or that only one side has)."""
    lines = []
    for k in sorted(set(expected) | set(got), key=repr):
        e, g = expected.get(k), got.get(k)
        if e != g:
            lines.append(f"{what} {_label(k)}: cProfile {e}, perfkit {g}")
    return lines


def assert_same_counts(cp: Summary, pk: Summary, edges: bool = True) -> None:
    """Per-function (cc, nc), and per-edge (cc, nc) when ``edges``, identical."""
    problems = diff_counts(cp.funcs, pk.funcs, "calls of")
    if edges:
        problems += diff_counts(cp.edges, pk.edges, "edge")
    assert not problems, "perfkit's counts differ from cProfile's:\n  " + "\n  ".join(problems)


def assert_same_python_counts(cp_full: Summary, pk_py: Summary) -> None:
    """Python-frames mode against cProfile's full profile.

    Functions: the Python rows' (cc, nc) are identical and there are no C rows.
    Edges: a Python callee that cProfile saw called only from Python functions
    has the same callers with the same counts; one that a C function called
    (sorted's key, say) is attributed to the nearest Python caller instead, so
    only its total number of calls from callers is compared.
    """
    cp = cp_full.python_only()
    problems = diff_counts(cp.funcs, pk_py.funcs, "calls of")
    problems += [f"C row in Python-frames mode: {fmt_key(k)}" for k in pk_py.funcs if k[0] == "~"]
    via_c = {callee for (caller, callee) in cp_full.edges if caller[0] == "~"}
    cp_edges = {e: v for e, v in cp.edges.items() if e[1] not in via_c}
    pk_edges = {e: v for e, v in pk_py.edges.items() if e[1] not in via_c}
    problems += diff_counts(cp_edges, pk_edges, "edge")
    for callee in via_c:
        if callee[0] == "~":
            continue
        want = sum(v[1] for (_c, g), v in cp_full.edges.items() if g == callee)
        got = sum(v[1] for (_c, g), v in pk_py.edges.items() if g == callee)
        if want != got:
            problems.append(f"calls into {fmt_key(callee)} from callers: cProfile {want}, perfkit {got}")
    assert not problems, "perfkit (builtins=False) differs from cProfile:\n  " + "\n  ".join(problems)


@contextlib.contextmanager
def gc_disabled():
    """No cyclic GC (and so no finalizers of unrelated objects) while profiling."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def run_cprofile(func: Callable[[], Any]) -> cProfile.Profile:
    prof = cProfile.Profile()
    with gc_disabled():
        prof.enable()
        try:
            func()
        finally:
            prof.disable()
    prof.create_stats()
    return prof


def cprofile_of_tasks(func: Callable[[Any], Any], items: Iterable[Any]) -> dict:
    """cProfile's stats of ``func(x)`` for each x, run in this process: the
    anchor for the profile of a Parallel call of the same tasks."""
    prof = cProfile.Profile()
    prof.enable()
    for x in items:
        func(x)
    prof.disable()
    prof.create_stats()
    return prof.stats


def run_perfkit(func: Callable[[], Any], builtins: bool = True, clock: str = "wall") -> perfkit.Profiler:
    prof = perfkit.Profiler(builtins=builtins, clock=clock)
    with gc_disabled():
        prof.enable()
        try:
            func()
        finally:
            prof.disable()
    prof.create_stats()
    return prof


@dataclass
class Both:
    cp: Summary
    pk: Summary
    cprofile: cProfile.Profile
    profiler: perfkit.Profiler


def profile_both(func: Callable[[], Any], builtins: bool = True, warmup: bool = True) -> Both:
    """Run ``func`` once unprofiled (so that caches and lazy imports settle),
    then under cProfile and under perfkit, in the same process."""
    if warmup:
        func()
    cp = run_cprofile(func)
    pk = run_perfkit(func, builtins=builtins)
    return Both(summarize(cp.stats), summarize(pk.stats), cp, pk)


# -- the exact tree ------------------------------------------------------------------


def children_of(nodes) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        if i:
            out[n[1]].append(i)
    return out


def tree_counts(funcs: list[Key], nodes, roots: Iterable[int] | None = None) -> Summary:
    """cProfile's counts for the calls of a thread's tree (or of the subtrees
    at ``roots``): a call is primitive when its function (for an edge: the
    same caller→callee pair) is not already on the path."""
    kids = children_of(nodes)
    counts: dict[Key, list[int]] = {}
    edges: dict[tuple[Key, Key], list[int]] = {}
    on_path: Counter = Counter()
    edge_on_path: Counter = Counter()
    start = list(kids[0]) if roots is None else list(roots)
    for root in start:
        stack = [(root, None, False)]
        while stack:
            i, parent_key, leaving = stack.pop()
            key = tuple(funcs[nodes[i][0]])
            edge = (parent_key, key) if parent_key is not None else None
            if leaving:
                on_path[key] -= 1
                if edge:
                    edge_on_path[edge] -= 1
                continue
            calls = nodes[i][2]
            c = counts.setdefault(key, [0, 0])
            c[1] += calls
            if on_path[key] == 0:
                c[0] += calls
            on_path[key] += 1
            if edge:
                e = edges.setdefault(edge, [0, 0])
                e[1] += calls
                if edge_on_path[edge] == 0:
                    e[0] += calls
                edge_on_path[edge] += 1
            stack.append((i, parent_key, True))
            for child in reversed(kids[i]):
                stack.append((child, key, False))
    return Summary(
        {k: tuple(v) for k, v in counts.items() if not is_profiler_key(k)},
        {e: tuple(v) for e, v in edges.items() if not is_profiler_key(e[0]) and not is_profiler_key(e[1])},
    )


def find_nodes(funcs: list[Key], nodes, name: str, file: str | None = None) -> list[int]:
    out = []
    for i, n in enumerate(nodes):
        if i == 0:
            continue
        k = funcs[n[0]]
        if k[2] == name and (file is None or os.path.abspath(k[0]) == os.path.abspath(file)):
            out.append(i)
    return out


def node_path(funcs: list[Key], nodes, i: int) -> list[str]:
    path = []
    while i:
        path.append(funcs[nodes[i][0]][2])
        i = nodes[i][1]
    return path[::-1]


def main_thread_tree(rec: perfkit.Recording):
    """The thread of the recording that is this process's main thread."""
    ident = threading.main_thread().ident
    for name, tid, pid, nodes in rec.threads():
        if tid == ident:
            return name, nodes
    raise AssertionError(f"no tree for the main thread {ident} in {[t[:3] for t in rec.threads()]}")


# -- threads -------------------------------------------------------------------------


def cprofile_in_thread(func: Callable[..., Any], *args: Any, name: str = "cprofile-worker") -> dict:
    """cProfile enabled inside a new thread around ``func(*args)``: the stats."""
    out: dict[str, Any] = {}

    def target():
        prof = cProfile.Profile()
        prof.enable()
        try:
            func(*args)
        finally:
            prof.disable()
        prof.create_stats()
        out["stats"] = prof.stats

    t = threading.Thread(target=target, name=name)
    with gc_disabled():
        t.start()
        t.join()
    return out["stats"]


# -- the command line ----------------------------------------------------------------


def perfkit_command() -> list[str]:
    """The installed ``perfkit`` script next to this interpreter, else ``python -m perfkit``."""
    script = Path(sys.executable).parent / "perfkit"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "perfkit"]


def run_cli(*args: str, cwd=None, env=None, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("PYTHONPATH", None)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    return subprocess.run(
        [*perfkit_command(), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )


def no_crash_noise(stderr: str) -> list[str]:
    """What in stderr betrays a Python traceback or a Rust panic."""
    bad = []
    for marker in ("Traceback (most recent call last)", "panicked", "RUST_BACKTRACE", "thread 'main'"):
        if marker in stderr:
            bad.append(marker)
    return bad


@pytest.fixture
def batch_sizes(monkeypatch):
    """The size of each batch perfkit.Parallel draws from here on (no costs
    remembered from earlier calls)."""
    import perfkit.parallel as pp
    from perfkit import _native

    sizes = []
    draw = _native.draw_uniform_batch

    def recording_draw(tasks, n, function, head=None, pack=True):
        sizes.append(n)
        return draw(tasks, n, function, head, pack)

    monkeypatch.setattr(_native, "draw_uniform_batch", recording_draw)
    monkeypatch.setattr(pp, "_cost_memory", {})
    return sizes


@pytest.fixture
def programs_dir() -> Path:
    return PROGRAMS_DIR


@pytest.fixture(scope="module")
def dask_client():
    """A Client of a small LocalCluster on loopback (2 single-thread worker
    processes), one per test module, closed at its end."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def counts_by_name(stats: dict, file: str) -> dict:
    """{function name: (primitive calls, all calls)} of a pstats dict, for `file`'s functions."""
    return {name: (cc, nc) for (f, _, name), (cc, nc, *_rest) in stats.items() if f == file}


def c_calls_from(stats: dict, name: str, file: str, caller: str) -> int:
    """Calls of the C function `name` made by `file`'s function `caller`, in a pstats dict."""
    return sum(
        edge[1]
        for (f, _, n), (*_counts, callers) in stats.items()
        if f == "~" and n == name
        for (cf, _, cn), edge in callers.items()
        if cf == file and cn == caller
    )
