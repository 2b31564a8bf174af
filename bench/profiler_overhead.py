#!/usr/bin/env python3
"""What a profiler costs, as a multiple of the unprofiled run, on pyperformance's call-heavy benchmarks.

    python bench/profiler_overhead.py [--benchmarks richards,go] [--rounds 5] [--quick]
                                      [--json out.json] [--no-perfkit] [--no-floor] [--configs KEYS]

Everything is measured in one process, interleaved: for each benchmark, one
warm-up round, then R rounds in each of which every configuration runs the
same fixed-size workload once, in an order that rotates from round to round
(so slow drifts of a noisy machine hit every configuration alike). The ratio
of a configuration is the median of its times over the median unprofiled
time. Compare ratios from one run; absolute times from different runs (or
machines) are not comparable.

Configurations: no profiler; cProfile; perfkit (all calls, and Python frames
only); the do-nothing "floor" hooks of ../shared/floor, which show what any
profiler pays to be called by the interpreter at all; VizTracer if installed.
Only the workload is timed: creating a profiler, enable(), disable() and
reading its results are one-off costs and happen outside the clock.

The Markdown table goes to stdout; progress and notes go to stderr (the notes
are repeated under the table). Exit status: 0, or 1 if some configuration
failed (raised, changed the workload's result, or recorded nothing), or 2 if
pyperformance/pyperf are not installed.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import _pyperformance  # bench/ is sys.path[0] when this file is run as a script

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
DEFAULT_FLOOR_SRC = os.path.join(os.path.dirname(REPO_ROOT), "shared", "floor")

# Row keys, for --configs, in table order.
CONFIG_KEYS = (
    "none",
    "cprofile",
    "perfkit",
    "perfkit-pyframes",
    "nullprof",
    "nullmon",
    "nullmon-py",
    "null523",
    "viztracer",
)

DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 2


class Failed(Exception):
    """A configuration cannot be measured on this benchmark (its message says why)."""


# -- configurations ----------------------------------------------------------


class Config:
    """One way of running the workload. Subclasses hook a profiler in and out.

    ``prepare`` and ``check`` run outside the timed region; ``start``/``stop``
    bracket it. ``check`` raises Failed if the tool recorded nothing, and may
    return how many calls of the benchmark's own functions it counted.
    """

    key = ""
    label = ""

    def prepare(self) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def check(self, source: str) -> int | None:
        return None


class NoProfiler(Config):
    key, label = "none", "none"


class CProfile(Config):
    key, label = "cprofile", "cProfile"

    def prepare(self) -> None:
        self.prof: cProfile.Profile | None = cProfile.Profile()

    def start(self) -> None:
        assert self.prof is not None
        self.prof.enable()

    def stop(self) -> None:
        assert self.prof is not None
        self.prof.disable()

    def check(self, source: str) -> int | None:
        assert self.prof is not None
        entries = self.prof.getstats()
        self.prof = None  # a fresh profiler each run: nothing builds up between runs
        if not entries:
            raise Failed("cProfile recorded nothing")
        # Entries for C functions carry a string, not a code object.
        return sum(e.callcount for e in entries if getattr(e.code, "co_filename", None) == source)


class Perfkit(Config):
    def __init__(self, perfkit: Any, builtins: bool) -> None:
        self.perfkit = perfkit
        self.builtins = builtins
        self.key = "perfkit" if builtins else "perfkit-pyframes"
        self.label = "perfkit full" if builtins else "perfkit pyframes"

    def prepare(self) -> None:
        self.prof = self.perfkit.Profiler(builtins=self.builtins)

    def start(self) -> None:
        self.prof.enable()

    def stop(self) -> None:
        self.prof.disable()

    def check(self, source: str) -> int | None:
        # A profiler that silently records nothing would look very cheap: every
        # perfkit run must have recorded the benchmark's own functions.
        stats = self.prof.recording().stats_dict()
        self.prof = None
        if not stats:
            raise Failed(f"{self.label} recorded nothing")
        # pstats rows: (filename, line, name) -> (primitive calls, total calls, tt, ct, callers)
        calls = sum(row[1] for (filename, _, _), row in stats.items() if filename == source)
        if not calls:
            raise Failed(f"{self.label} recorded no call of {os.path.basename(source)}'s functions")
        return calls


class NullProf(Config):
    """PyEval_SetProfile with a callback that reads the clock and returns."""

    key, label = "nullprof", "nullprof (floor)"

    def __init__(self, module: Any) -> None:
        self.module = module

    def start(self) -> None:
        self.module.enable(1)  # 1: the callback reads the clock, as any profiler's must

    def stop(self) -> None:
        self.module.disable()


# sys.monitoring events cProfile listens to on 3.12+ (Modules/_lsprof.c), and the Python-frame subset.
_PY_EVENTS = ("PY_START", "PY_RESUME", "PY_THROW", "PY_RETURN", "PY_YIELD", "PY_UNWIND")
_CPROFILE_EVENTS = _PY_EVENTS + ("CALL", "C_RETURN", "C_RAISE")


class NullMon(Config):
    """nullmon.cb (a METH_FASTCALL no-op that reads the clock) on sys.monitoring events."""

    def __init__(self, module: Any, python_only: bool) -> None:
        self.module = module
        self.events = _PY_EVENTS if python_only else _CPROFILE_EVENTS
        self.key = "nullmon-py" if python_only else "nullmon"
        self.label = "nullmon PY_* (floor)" if python_only else "nullmon (floor)"

    def start(self) -> None:
        mon = sys.monitoring  # type: ignore[attr-defined]  # 3.12+
        tool = mon.PROFILER_ID
        mon.use_tool_id(tool, "nullmon")  # ValueError if another profiler holds the id
        mask = 0
        for name in self.events:
            event = getattr(mon.events, name)
            mon.register_callback(tool, event, self.module.cb)
            mask |= event
        mon.set_events(tool, mask)

    def stop(self) -> None:
        mon = sys.monitoring  # type: ignore[attr-defined]
        tool = mon.PROFILER_ID
        mon.set_events(tool, 0)
        # free_tool_id does not drop callbacks before 3.14: unregister them ourselves.
        for name in self.events:
            mon.register_callback(tool, getattr(mon.events, name), None)
        mon.free_tool_id(tool)


class Null523(Config):
    """A PEP 523 frame-evaluation function that reads the clock around each Python frame."""

    key, label = "null523", "null523 (floor)"

    def __init__(self, module: Any) -> None:
        self.module = module
        self.frames = 0

    def start(self) -> None:
        self.module.enable()

    def stop(self) -> None:
        self.frames = self.module.disable()  # cumulative count of evaluated frames

    def check(self, source: str) -> int | None:
        if not self.frames:
            raise Failed("null523 saw no frame")
        return None


class VizTracerConfig(Config):
    key, label = "viztracer", "VizTracer"

    def __init__(self, viztracer: Any) -> None:
        # One tracer, cleared after each run: its 1M-entry ring buffer is
        # allocated once, as a user would (and its constructor is slow).
        self.tracer = viztracer.VizTracer(verbose=0, register_global=False)
        # Before 3.12 the constructor installs a "disabled" profile function
        # (sys.getprofile() is the tracer) that stays until the first stop():
        # left there, it would slow down every other configuration's runs.
        self.tracer.start()
        self.tracer.stop()
        self.tracer.clear()

    def start(self) -> None:
        self.tracer.start()

    def stop(self) -> None:
        self.tracer.stop()

    def check(self, source: str) -> int | None:
        # Not verified: parse() turns the whole buffer into dicts (seconds). VizTracer is a reference point only.
        self.tracer.clear()
        return None


# -- the floor hooks -----------------------------------------------------------


def floor_modules(src: str, notes: list[str]) -> dict[str, Any]:
    """Build (if needed) and import the floor hooks for this interpreter; {} with a note if impossible.

    They go to bench/.floor/<python version>/: the C extensions are specific
    to one interpreter (null523 even compiles against its internal headers).
    They are rebuilt when a source is newer than a built file.
    """
    wanted = ["nullprof", "null523"] + (["nullmon"] if sys.version_info >= (3, 12) else [])
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    out = os.path.join(BENCH_DIR, ".floor", platform.python_version())
    built = {name: os.path.join(out, name + suffix) for name in wanted}
    script = os.path.join(src, "build.sh")
    sources = [script] + [os.path.join(src, name + ".c") for name in wanted]
    missing_sources = [path for path in sources if not os.path.exists(path)]

    def stale() -> bool:
        if not all(os.path.exists(path) for path in built.values()):
            return True
        if missing_sources:  # built earlier, sources gone: use what we have
            return False
        return min(map(os.path.getmtime, built.values())) < max(map(os.path.getmtime, sources))

    if stale():
        problem = None
        include = sysconfig.get_paths()["include"]
        if missing_sources:
            problem = f"{missing_sources[0]} not found (--floor-src)"
        elif shutil.which("gcc") is None:
            problem = "gcc not found"
        elif not os.path.exists(os.path.join(include, "Python.h")):
            problem = f"no Python.h in {include} (CPython's headers are needed)"
        else:
            problem = _build_floor(script, out, built)
        if problem:
            notes.append(f"floor rows skipped: could not build the floor hooks: {problem}")
            return {}
    modules = {}
    sys.path.insert(0, out)
    try:
        for name in wanted:
            try:
                modules[name] = importlib.import_module(name)
            except ImportError as exc:
                notes.append(f"floor row {name} skipped: {exc}")
    finally:
        sys.path.remove(out)
    return modules


def _build_floor(script: str, out: str, built: dict[str, str]) -> str | None:
    """Run build.sh for this interpreter; returns a problem, or None once the modules are in place."""
    print(f"building the floor hooks into {os.path.relpath(out)} ...", file=sys.stderr)
    os.makedirs(out, exist_ok=True)
    # Build next to `out` and move into place, so that a concurrent run never
    # imports a half-written extension.
    tmp = tempfile.mkdtemp(prefix="build-", dir=os.path.dirname(out))
    try:
        proc = subprocess.run(
            ["bash", script, tmp, sys.executable], capture_output=True, text=True, check=False
        )
        # Judge by the files, not the exit status: build.sh ends with
        # `<is 3.12+> && gcc nullmon.c`, so under `set -e` it exits 1 on
        # 3.9-3.11 after building everything those versions can use.
        made = {path: os.path.join(tmp, os.path.basename(path)) for path in built.values()}
        missing = [os.path.basename(path) for path, new in made.items() if not os.path.exists(new)]
        if missing:
            output = (proc.stderr or proc.stdout or "(no output)").strip().splitlines()
            errors = [line.strip() for line in output if "error" in line.lower()] or output[-2:]
            return f"build.sh exited {proc.returncode} without {', '.join(missing)}: " + " | ".join(
                errors[:2]
            )
        for path, new in made.items():
            os.replace(new, path)
    except OSError as exc:
        return str(exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return None


# -- measuring -------------------------------------------------------------------


def hooks_state() -> tuple[Any, ...]:
    """Everything a Python-visible profiler could leave installed (PEP 523 hooks are not visible)."""
    state: tuple[Any, ...] = (sys.getprofile(), sys.gettrace())
    if sys.version_info >= (3, 12):
        state += tuple(sys.monitoring.get_tool(i) for i in range(6))  # type: ignore[attr-defined]
    return state


def run_once(config: Config, workload: _pyperformance.Workload, expected: Any, clean: tuple[Any, ...]):
    """Time one run of the workload under ``config``; returns (seconds, calls counted or None)."""
    gc.collect()  # garbage of the previous run is not this run's cost
    # Any exception from a profiler under test makes a FAIL row, not a crash (hence the broad excepts).
    problem = None
    try:
        config.prepare()
        config.start()
    except Exception as exc:  # noqa: BLE001
        problem = f"could not start: {type(exc).__name__}: {exc}"
    else:
        try:
            t0 = time.perf_counter()
            result = workload.run()
            elapsed = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001
            problem = f"the workload raised {type(exc).__name__}: {exc}"
        finally:
            try:
                config.stop()
            except Exception as exc:  # noqa: BLE001
                problem = problem or f"could not stop: {type(exc).__name__}: {exc}"
    if hooks_state() != clean:
        # Every later number would include this leftover hook: stop here.
        sys.exit(f"error: {config.label} changed the hooks from {clean!r} to {hooks_state()!r}")
    if problem is None and result != expected:
        problem = f"the workload returned {result!r} under {config.label}, {expected!r} without"
    if problem is not None:
        raise Failed(problem)
    try:
        return elapsed, config.check(workload.source)
    except Failed:
        raise
    except Exception as exc:
        raise Failed(f"reading its results raised {type(exc).__name__}: {exc}") from exc


def measure(workload: _pyperformance.Workload, configs: Sequence[Config], rounds: int) -> dict[str, Any]:
    clean = hooks_state()
    expected = workload.run()  # warms the workload up, and its result is what every run must return
    times: dict[str, list[float]] = {c.key: [] for c in configs}
    calls: dict[str, int | None] = {}
    failures: dict[str, str] = {}
    # Round -1 is the warm-up: every configuration runs once unrecorded, so one-off
    # costs (first imports, caches, first instrumentation of the code) are not counted.
    for r in range(-1, rounds):
        shift = r % len(configs)
        for config in list(configs[shift:]) + list(configs[:shift]):
            if config.key in failures:
                continue
            try:
                elapsed, counted = run_once(config, workload, expected, clean)
            except Failed as exc:
                failures[config.key] = str(exc)
                continue
            if r < 0:
                calls[config.key] = counted
            else:
                times[config.key].append(elapsed)
    if "none" in failures:
        sys.exit(f"error: {workload.name} fails without a profiler: {failures['none']}")
    medians = {key: statistics.median(ts) for key, ts in times.items() if ts and key not in failures}
    return {
        "size": workload.size,
        "times": times,
        "median": medians,
        "ratio": {key: m / medians["none"] for key, m in medians.items()},
        "calls": calls,
        "failures": failures,
    }


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


# -- reporting ------------------------------------------------------------------


def markdown_table(
    configs: Sequence[Config], names: Sequence[str], results: dict[str, dict[str, Any]]
) -> tuple[str, dict[str, float | None]]:
    header = ["× unprofiled", *names, "geomean"]
    rows = [["none (median ms)", *(f"{results[n]['median']['none'] * 1e3:.0f}" for n in names), ""]]
    means: dict[str, float | None] = {}
    for config in configs:
        if config.key == "none":
            continue
        cells = []
        for n in names:
            ratio = results[n]["ratio"].get(config.key)
            cells.append("FAIL" if config.key in results[n]["failures"] else f"{ratio:.2f}")
        ratios = [results[n]["ratio"][config.key] for n in names if config.key in results[n]["ratio"]]
        # No geomean over a partial row: it would not be comparable with the others.
        mean = means[config.key] = geomean(ratios) if len(ratios) == len(names) else None
        rows.append([config.label, *cells, "–" if mean is None else f"**{mean:.2f}**"])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "| " + " | ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))]) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)]), means


def call_count_notes(configs: Sequence[Config], names: Sequence[str], results: dict[str, Any]) -> list[str]:
    """Where a profiler's count of the benchmark's own calls differs from cProfile's (same workload)."""
    notes = []
    for n in names:
        calls = results[n]["calls"]
        reference = calls.get("cprofile")
        if not reference:
            continue
        for config in configs:
            counted = calls.get(config.key)
            if config.key != "cprofile" and counted is not None and counted != reference:
                notes.append(
                    f"{n}: {config.label} counted {counted:,} calls of the benchmark's functions, "
                    f"cProfile {reference:,} ({counted / reference - 1:+.1%})"
                )
    return notes


# -- main -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--benchmarks",
        default=",".join(_pyperformance.BENCHMARKS),
        help="comma-separated subset of: %(default)s",
    )
    parser.add_argument(
        "--rounds", type=int, help=f"measured rounds (default {DEFAULT_ROUNDS}, {QUICK_ROUNDS} with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds, smaller workloads (CI smoke test)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the raw numbers there")
    parser.add_argument("--no-perfkit", action="store_true", help="leave out the perfkit rows")
    parser.add_argument("--no-floor", action="store_true", help="leave out the floor rows (no C build)")
    parser.add_argument(
        "--configs",
        metavar="KEYS",
        help="only these rows (none is always measured): comma-separated from " + ", ".join(CONFIG_KEYS),
    )
    parser.add_argument(
        "--floor-src", default=DEFAULT_FLOOR_SRC, help="the floor hooks' sources (%(default)s)"
    )
    args = parser.parse_args(argv)
    args.benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    unknown = [b for b in args.benchmarks if b not in _pyperformance.BENCHMARKS]
    if unknown or not args.benchmarks:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {','.join(_pyperformance.BENCHMARKS)}")
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.configs is not None:
        args.configs = {k.strip() for k in args.configs.split(",") if k.strip()} | {"none"}
        unknown = sorted(args.configs - set(CONFIG_KEYS))
        if unknown:
            parser.error(f"unknown configuration(s) {unknown}; choose from {','.join(CONFIG_KEYS)}")
    return args


def make_configs(args: argparse.Namespace, notes: list[str], versions: dict[str, str]) -> list[Config]:
    def wanted(*keys: str) -> bool:
        return args.configs is None or any(k in args.configs for k in keys)

    configs: list[Config] = [NoProfiler()]
    if wanted("cprofile"):
        configs.append(CProfile())
    if args.no_perfkit:
        notes.append("perfkit rows left out (--no-perfkit)")
    elif wanted("perfkit", "perfkit-pyframes"):
        try:
            import perfkit
        except ImportError as exc:
            notes.append(f"perfkit rows skipped: import perfkit failed ({exc})")
        else:
            versions["perfkit"] = getattr(perfkit, "__version__", "?")
            configs += [Perfkit(perfkit, builtins=True), Perfkit(perfkit, builtins=False)]
    if args.no_floor:
        notes.append("floor rows left out (--no-floor)")
    elif wanted("nullprof", "nullmon", "nullmon-py", "null523"):
        floor = floor_modules(args.floor_src, notes)
        if "nullprof" in floor:
            configs.append(NullProf(floor["nullprof"]))
        if "nullmon" in floor:
            configs += [
                NullMon(floor["nullmon"], python_only=False),
                NullMon(floor["nullmon"], python_only=True),
            ]
        elif floor and sys.version_info < (3, 12) and wanted("nullmon", "nullmon-py"):
            notes.append("nullmon rows skipped: sys.monitoring needs Python 3.12+")
        if "null523" in floor:
            configs.append(Null523(floor["null523"]))
        if floor:
            notes.append(
                "(floor) rows: do-nothing C hooks that read CLOCK_MONOTONIC (clock_gettime) and return: "
                "nullprof = PyEval_SetProfile (cProfile's events), nullmon = sys.monitoring with "
                "cProfile's events, nullmon PY_* = its Python-frame events only, null523 = a PEP 523 "
                "frame-evaluation hook (Python frames only). A profiler on the same mechanism with a "
                "cheaper clock (perfkit reads the TSC where the kernel trusts it) can go below its floor"
            )
    if wanted("viztracer"):
        try:
            import viztracer
        except ImportError:
            notes.append(f"VizTracer row skipped: not installed ({sys.executable} -m pip install viztracer)")
        else:
            versions["viztracer"] = getattr(viztracer, "__version__", "?")
            configs.append(VizTracerConfig(viztracer))
    # Both perfkit rows, and both nullmon rows, come from one import or build: drop the unasked one.
    return [c for c in configs if wanted(c.key)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *(sys.argv if argv is None else ["profiler_overhead.py", *argv])])
    _pyperformance.benchmarks_dir()  # exits 2, with the pip command, if pyperformance is missing
    notes: list[str] = []
    versions = {"pyperformance": _pyperformance.pyperformance_version()}
    initial = hooks_state()
    if any(hook is not None for hook in initial):  # e.g. run under coverage or a debugger
        notes.append("a profiler, tracer or monitoring tool was already active: every number includes it")
    configs = make_configs(args, notes, versions)
    if hooks_state() != initial:
        sys.exit(f"error: setting up the profilers changed the hooks from {initial!r} to {hooks_state()!r}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for name in args.benchmarks:
        workload = _pyperformance.load(name, quick=args.quick)
        t0 = time.perf_counter()
        results[name] = measure(workload, configs, args.rounds)
        print(
            f"{name}: {workload.size}, {len(configs)} configurations x (1 + {args.rounds}) runs "
            f"in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
        for key, why in results[name]["failures"].items():
            print(f"  FAILED {key}: {why}", file=sys.stderr)

    table, means = markdown_table(configs, args.benchmarks, results)
    impl = platform.python_implementation()
    print(
        f"{impl} {platform.python_version()} ({platform.system().lower()}, {platform.machine()}), "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f", {args.rounds} rounds{' (quick)' if args.quick else ''}; command: `{command}`"
    )
    print()
    print(table)
    print()
    labels = {c.key: c.label for c in configs}
    notes += [
        f"{n}: {labels[key]} FAILED: {why}"
        for n in args.benchmarks
        for key, why in results[n]["failures"].items()
    ]
    notes += call_count_notes(configs, args.benchmarks, results)
    spreads = ", ".join(
        f"{n} {max(results[n]['times']['none']) / min(results[n]['times']['none']) - 1:.0%}"
        for n in args.benchmarks
    )
    notes.append(f"noise, unprofiled max/min - 1 over the rounds: {spreads}")
    notes.append("workloads: " + "; ".join(f"{n}: {results[n]['size']}" for n in args.benchmarks))
    print("Notes:")
    for note in notes:
        print(f"- {note}")
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)

    if args.json:
        report = {
            "python": sys.version,
            "executable": sys.executable,
            "command": command,
            "versions": versions,
            "rounds": args.rounds,
            "quick": args.quick,
            "configs": {c.key: c.label for c in configs},
            "benchmarks": results,
            "geomean": means,
            "notes": notes,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 1 if any(results[n]["failures"] for n in args.benchmarks) else 0


if __name__ == "__main__":
    sys.exit(main())
