"""pyperformance's call-heavy benchmarks as plain zero-argument callables.

pyperformance ships each benchmark as ``bm_<name>/run_benchmark.py``, a script
that hands its inner function to ``pyperf.Runner`` under ``if __name__ ==
"__main__":``. pyperf spawns worker processes and calibrates loop counts, which
is the opposite of what a profiler-overhead benchmark needs: one process, a
fixed amount of work, and every profiler measured on exactly that work. So we
import each script as an ordinary module (its ``__main__`` block does not run;
pyperf only has to be importable) and call its inner function ourselves.

The workloads are pyperformance's own code, unmodified: the profilers see the
same functions, calls and generators that pyperformance's numbers are about.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

# The call-heavy subset of pyperformance: deep Python call trees, method calls,
# generators. These are where a deterministic profiler's per-call cost shows.
BENCHMARKS = ("richards", "raytrace", "go", "deltablue", "chaos", "nqueens", "generators")

# Loops per call (normal, --quick), chosen so that one call takes roughly
# 100-250 ms unprofiled (20-100 ms with --quick) with CPython 3.11-3.13 on the
# 2-core machines here: long enough that the clock and enable/disable are
# noise, short enough that 9 configurations x 6 rounds x 7 benchmarks take a
# few minutes. Each count multiplies pyperformance's own unit of work (see
# the factories below). generators varies most: a walk is ~60 ms on 3.11 but
# ~20 ms on 3.12+.
SIZES: dict[str, tuple[int, int]] = {
    "richards": (5, 1),
    "raytrace": (1, 1),  # --quick also renders a quarter of the picture (50x50)
    "go": (2, 1),
    "deltablue": (60, 15),
    "chaos": (3, 1),
    "nqueens": (2, 1),
    "generators": (4, 1),
}


@dataclass(frozen=True)
class Workload:
    name: str
    run: Callable[[], Any]  # one fixed-size iteration; returns a deterministic value or None
    size: str  # what one call does, in the benchmark's own terms
    source: str  # run_benchmark.py: the benchmark's own functions live in this file


def pip_command() -> str:
    return f"{sys.executable} -m pip install pyperformance pyperf"


def _missing(what: str) -> NoReturn:
    print(f"error: {what} is not installed for {sys.executable}; install it with:", file=sys.stderr)
    print(f"    {pip_command()}", file=sys.stderr)
    sys.exit(2)


def benchmarks_dir() -> str:
    """Where the installed pyperformance keeps ``bm_<name>/`` (exits 2 if it is not installed)."""
    try:
        import pyperformance
    except ImportError:
        _missing("pyperformance")
    data_dir = getattr(pyperformance, "DATA_DIR", None) or os.path.join(
        os.path.dirname(pyperformance.__file__), "data-files"
    )
    return os.path.join(data_dir, "benchmarks")


def pyperformance_version() -> str:
    import pyperformance

    return getattr(pyperformance, "__version__", "?")


def load_module(name: str) -> types.ModuleType:
    """Import ``bm_<name>/run_benchmark.py`` under a private module name.

    The module's ``__name__`` is not ``"__main__"``, so its pyperf.Runner block
    does not run. It is registered in ``sys.modules`` before executing because
    class machinery (``from __future__ import annotations`` plus typing,
    pickling) may look the module up by name.
    """
    path = os.path.join(benchmarks_dir(), f"bm_{name}", "run_benchmark.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: this pyperformance has no {name!r} benchmark")
    module_name = f"_pyperformance_bm_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as exc:
        del sys.modules[module_name]
        if exc.name == "pyperf":
            _missing("pyperf")
        raise
    return module


def _repeat(loops: int, func: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """Call ``func(*args)`` ``loops`` times, returning the last result."""

    def run() -> Any:
        result = None
        for _ in range(loops):
            result = func(*args)
        return result

    return run


# Each factory takes (module, loops, quick) and returns (callable, size description).
# They call the function that the benchmark's __main__ block hands to pyperf,
# with the arguments pyperformance uses by default.


def _richards(m: types.ModuleType, loops: int, quick: bool) -> tuple[Callable[[], Any], str]:
    # Richards().run(n) does n full scheduler simulations; True if their counts check out.
    richards = m.Richards()

    def run() -> bool:
        # Each simulation links its 6 tasks into the global task list and never
        # unlinks them, so every later call visits a few more stale tasks (+6
        # calls a simulation). Starting from the empty list makes every call
        # the same work, as the first one in a fresh process.
        m.taskWorkArea.taskList = None
        return richards.run(loops)

    return run, f"Richards().run({loops})"


def _raytrace(m: types.ModuleType, loops: int, quick: bool) -> tuple[Callable[[], Any], str]:
    # One 100x100 render is already ~200 ms; --quick renders 50x50 instead.
    w, h = m.DEFAULT_WIDTH, m.DEFAULT_HEIGHT
    if quick:
        w, h = w // 2, h // 2

    def run() -> None:
        m.bench_raytrace(loops, w, h, None)  # returns its own timing: not deterministic, dropped

    return run, f"bench_raytrace({loops}, {w}, {h}, None)"


def _go(m: types.ModuleType, loops: int, quick: bool) -> tuple[Callable[[], Any], str]:
    # versus_cpu() seeds random itself, so every call plays the same games.
    return _repeat(loops, m.versus_cpu), f"versus_cpu() x {loops}"


def _deltablue(m: types.ModuleType, loops: int, quick: bool) -> tuple[Callable[[], Any], str]:
    n = 100  # pyperformance's size; a single call is only a few ms, so it is repeated
    return _repeat(loops, m.delta_blue, n), f"delta_blue({n}) x {loops}"


class _CaptureRunner:
    """Stands in for pyperf.Runner: records what ``main()`` would benchmark."""

    def __init__(self) -> None:
        self.metadata: dict[str, Any] = {}
        self.call: tuple[Callable[..., Any], tuple[Any, ...]] | None = None

    def bench_func(self, name: str, func: Callable[..., Any], *args: Any) -> None:
        self.call = (func, args)


def _chaos(m: types.ModuleType, loops: int, quick: bool) -> tuple[Callable[[], Any], str]:
    # chaos builds its splines inside main(runner, args); rather than copy that
    # data we run main() with a stand-in runner and keep the call it asks for.
    args = argparse.Namespace(
        thickness=m.DEFAULT_THICKNESS,
        width=m.DEFAULT_WIDTH,
        height=m.DEFAULT_HEIGHT,
        iterations=m.DEFAULT_ITERATIONS,
        filename=None,
        rng_seed=m.DEFAULT_RNG_SEED,
    )
    runner = _CaptureRunner()
    m.main(runner, args)
    if runner.call is None:
        raise RuntimeError("bm_chaos main() did not call runner.bench_func")
    func, call_args = runner.call
    return _repeat(loops, func, *call_args), f"create_image_chaos({args.iterations} points) x {loops}"


def _nqueens(m: types.ModuleType, loops: int, quick: bool) -> tuple[Callable[[], Any], str]:
    return _repeat(loops, m.bench_n_queens, 8), f"bench_n_queens(8) x {loops}"


def _generators(m: types.ModuleType, loops: int, quick: bool) -> tuple[Callable[[], Any], str]:
    # bench_generators() builds a 100,000-node tree (untimed by pyperf, yet 40%
    # of the call) and then times walks of it through recursive `yield from`.
    # We build the tree here, outside the measurement, and time the same walk,
    # so that this row measures generator resumption as pyperformance does.
    iterable = m.tree(range(100000))

    def run() -> None:
        for _ in range(loops):
            for _ in iterable:
                pass

    return run, f"bench_generators' walk of tree(range(100000)) x {loops}"


_Factory = Callable[[types.ModuleType, int, bool], tuple[Callable[[], Any], str]]
_FACTORIES: dict[str, _Factory] = {
    "richards": _richards,
    "raytrace": _raytrace,
    "go": _go,
    "deltablue": _deltablue,
    "chaos": _chaos,
    "nqueens": _nqueens,
    "generators": _generators,
}


def load(name: str, quick: bool = False, loops: int | None = None) -> Workload:
    """The workload for benchmark ``name``; ``loops`` overrides the size table."""
    if name not in _FACTORIES:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    module = load_module(name)
    if loops is None:
        loops = SIZES[name][1 if quick else 0]
    run, size = _FACTORIES[name](module, loops, quick)
    return Workload(name=name, run=run, size=size, source=module.__file__ or "")
