"""perfkit.Parallel against joblib, multiprocessing.Pool, concurrent.futures and mpire, in one run.

    python bench/parallel_bench.py                # all nine workloads, 5 rounds
    python bench/parallel_bench.py --quick        # 1 round, smaller pandas/CPU workloads
    python bench/parallel_bench.py --workloads tiny,arrays --rounds 5

Every library gets n_jobs=2 (--n-jobs), a warm pool (created and used once
before timing, as joblib's and perfkit's reused pools are), the same task
function, and its idiomatic call (Pool.map / Executor.map get a chunksize
like Pool.map's own heuristic, else they would take minutes on tiny tasks).
Each round runs every configuration once, in a rotating order; the table
shows medians in ms and perfkit's speedup against each. Every result is
checked against the sequential one (a wrong result aborts the run), then
dropped. Before each timed run: a GC pass and --settle seconds (0.3) of quiet.
After the goals, for the CPU-bound workload, from 3 more calls per pool
whose tasks time themselves: the share of a call its workers spent inside
tasks, and a task's CPU time in its workers against this process alone.
Two CPU-bound workloads: `cpu`, one tight loop of int arithmetic, and
`cpumix`, tasks made of pyperformance's call-heavy benchmarks (real programs;
pyperformance comes with bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import gc
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _parallel_tasks as T
import perfkit
from _pyperformance import BENCHMARKS as PYPERFORMANCE_MIX
from perfkit import Parallel, delayed


@dataclasses.dataclass
class Record:
    """A class of the script (``__main__``), as users' scripts define them:
    pickle names it, and only a worker that has it can look it up."""

    x: float
    y: float


def record_norm(record):
    return (record.x * record.x + record.y * record.y) ** 0.5


def chunks_for(n, n_jobs):
    # multiprocessing.Pool.map's default: 4 chunks per worker
    c, extra = divmod(n, n_jobs * 4)
    return c + bool(extra)


def make_workloads(quick):
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = 200_000 if quick else 1_000_000
    df = pd.DataFrame(
        {
            "fin_study_id": rng.integers(0, 2000, rows),
            "a": rng.random(rows),
            "b": rng.normal(size=rows),
            "c": rng.integers(0, 100, rows),
        }
    )
    arrays = [rng.random(1 << 20) for _ in range(100)]  # 100 × 8 MB
    records = [Record(float(i), 1.0) for i in range(100_000)]
    cpu_n = 8
    cpu_size = T.calibrate_cpu(0.08 if quick else 0.2)
    return {
        "tiny": {
            "title": "100,000 tiny tasks (x*x)",
            "fn": T.square,
            "items": lambda: range(100_000),
            "star": False,
        },
        "scalars": {
            "title": "100,000 tiny tasks returning a numpy float",
            "fn": T.scalar_mean,
            "items": lambda: range(100_000),
            "star": False,
        },
        "records": {
            "title": "100,000 tasks on instances of a dataclass of the script (`__main__`)",
            "fn": record_norm,
            "items": lambda: records,
            "star": False,
        },
        "arrays": {
            "title": "100 numpy arrays of 8 MB, sum each",
            "fn": T.array_sum,
            "items": lambda: arrays,
            "star": False,
        },
        "results": {
            "title": "100 tasks returning an 8 MB numpy array each",
            "fn": T.array_of,
            "items": lambda: range(100),
            "star": False,
        },
        "cpu": {
            "title": f"{cpu_n} CPU-bound pure-Python tasks (~{cpu_size} loop steps each)",
            "fn": T.cpu_work,
            "items": lambda: [cpu_size] * cpu_n,
            "star": False,
        },
        "cpumix": {
            "title": f"{cpu_n} CPU-bound tasks of real programs (each runs pyperformance's "
            + ", ".join(PYPERFORMANCE_MIX)
            + ")",
            "fn": T.pyperformance_mix,
            "items": lambda: range(cpu_n),
            "star": False,
        },
        "pandas": {
            "title": f"pandas groupby: {rows:,} rows into 2,000 groups, features per group",
            "fn": T.featurize,
            "items": lambda: df.groupby("fin_study_id"),
            "star": True,
        },
        "threads": {
            "title": "threads backend: 100,000 tiny tasks (x*x)",
            "fn": T.square,
            "items": lambda: range(100_000),
            "star": False,
            "threads": True,
        },
    }


def runners(n_jobs, pools):
    """name -> callable(fn, items, star, threads) -> list."""

    def seq(fn, items, star, threads):
        return [fn(*x) for x in items] if star else [fn(x) for x in items]

    def perf(fn, items, star, threads):
        backend = "threads" if threads else None
        if star:
            return Parallel(n_jobs=n_jobs, backend=backend)(delayed(fn)(*x) for x in items)
        return Parallel(n_jobs=n_jobs, backend=backend)(delayed(fn)(x) for x in items)

    def jl(fn, items, star, threads):
        import joblib

        backend = "threading" if threads else None
        if star:
            return joblib.Parallel(n_jobs=n_jobs, backend=backend)(joblib.delayed(fn)(*x) for x in items)
        return joblib.Parallel(n_jobs=n_jobs, backend=backend)(joblib.delayed(fn)(x) for x in items)

    def pool(fn, items, star, threads):
        p = pools["threadpool" if threads else "pool"]
        items = list(items)
        cs = chunks_for(len(items), n_jobs)
        return p.starmap(fn, items, chunksize=cs) if star else p.map(fn, items, chunksize=cs)

    def futures(fn, items, star, threads):
        ex = pools["tpe" if threads else "ppe"]
        items = list(items)
        cs = chunks_for(len(items), n_jobs)
        if star:
            return list(ex.map(fn, *zip(*items), chunksize=cs))
        return list(ex.map(fn, items, chunksize=cs))

    def mpire_(fn, items, star, threads):
        p = pools["mpire_threads" if threads else "mpire"]
        if p is None:
            raise RuntimeError("mpire is not installed (pip install mpire)")
        items = list(items)
        # (mpire would concatenate array results into one array: a list, as the others return)
        return p.map(
            fn,
            items if star else [(x,) for x in items],
            iterable_len=len(items),
            concatenate_numpy_output=False,
        )

    return {
        "sequential": seq,
        "perfkit": perf,
        "joblib": jl,
        "mp.Pool": pool,
        "concurrent.futures": futures,
        "mpire": mpire_,
    }


def machine_ceiling(pool, n_jobs, n):
    """What this machine allows: a CPU-bound task's speed when n_jobs plain
    processes run one each at once, against one running alone (the best
    efficiency any pool can reach; under 1 when the cores are hyperthreads
    of one another or the host is busy). Median of 3."""
    ratios = []
    for _ in range(3):
        alone = pool.map(T.timed_cpu_work, [n])[0]
        together = statistics.mean(pool.map(T.timed_cpu_work, [n] * n_jobs, chunksize=1))
        ratios.append(alone / together)
    return statistics.median(ratios)


def where_cpu_time_went(run, names, n_jobs, items, calls=3):
    """For each pool, from `calls` calls whose tasks time themselves where they
    run (these calls, not the timed rounds; medians): the share of a call its
    workers spent inside tasks (wall time: the rest is the pool's dispatch,
    batching and waiting), and a task's CPU time there against the same
    task's CPU time in this process alone (how fast CPython ran it in that
    process, whatever else the machine was doing). Also returns the task's
    CPU time alone, in seconds."""
    alone = statistics.median(T.timed_cpu_work_both(items[0])[1] for _ in range(calls))
    out = {}
    for name in names:
        if name == "sequential":
            continue
        busy, slower = [], []
        for _ in range(calls):
            gc.collect()
            time.sleep(0.3)
            t0 = time.perf_counter()
            times = run[name](T.timed_cpu_work_both, list(items), False, False)
            wall = time.perf_counter() - t0
            busy.append(sum(w for w, _ in times) / (n_jobs * wall))
            slower.append(statistics.mean(c for _, c in times) / alone)
        out[name] = (statistics.median(busy), statistics.median(slower))
    return out, alone


def same(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, tuple):
            if not all(
                np.isclose(u, v, equal_nan=True) if isinstance(u, float) else u == v for u, v in zip(x, y)
            ):
                return False
        elif isinstance(x, np.ndarray):
            if not (type(y) is np.ndarray and x.dtype == y.dtype and np.array_equal(x, y)):
                return False
        elif isinstance(x, float):
            if type(x) is not type(y) or not np.isclose(x, y):
                return False
        elif x != y:
            return False
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workloads", default="tiny,scalars,records,arrays,results,cpu,cpumix,pandas,threads")
    ap.add_argument(
        "--settle", type=float, default=0.3, help="seconds of quiet before each timed run (default 0.3)"
    )
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    n_jobs = args.n_jobs
    try:
        from mpire import WorkerPool
    except ImportError:
        WorkerPool = None
    ctx = mp.get_context("forkserver" if sys.platform != "win32" else "spawn")
    pools = {
        "pool": ctx.Pool(n_jobs),
        "threadpool": mp.pool.ThreadPool(n_jobs),
        "ppe": cf.ProcessPoolExecutor(n_jobs, mp_context=ctx),
        "tpe": cf.ThreadPoolExecutor(n_jobs),
        "mpire": WorkerPool(n_jobs=n_jobs, keep_alive=True, start_method="forkserver")
        if WorkerPool
        else None,
        "mpire_threads": WorkerPool(n_jobs=n_jobs, keep_alive=True, start_method="threading")
        if WorkerPool
        else None,
    }
    workloads = make_workloads(args.quick)
    run = runners(n_jobs, pools)
    names = list(run)
    import joblib
    import pandas

    versions = (
        f"Python {platform.python_version()}, perfkit {perfkit.__version__}, joblib {joblib.__version__}, "
        f"numpy {np.__version__}, pandas {pandas.__version__}"
    )
    try:
        import mpire

        versions += f", mpire {mpire.__version__}"
    except Exception:  # noqa: BLE001, S110
        pass
    cmd = "python bench/parallel_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(
        f"`{cmd.strip()}` — {versions}; n_jobs={n_jobs}; {os.cpu_count()} CPUs; median of {rounds} round(s)\n"
    )
    table = {}
    raw = {}  # workload -> library -> each round's seconds

    for key in args.workloads.split(","):
        w = workloads[key]
        fn, star, threads = w["fn"], w["star"], w.get("threads", False)
        times = {n: [] for n in names}
        expected = None
        for r in range(rounds + 1):  # round 0: warm-up, not recorded
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                # What the previous library left running (workers freeing what
                # they received, a pool's cleanup thread) must not be timed here.
                gc.collect()
                time.sleep(args.settle)
                t0 = time.perf_counter()
                try:
                    out = run[name](fn, w["items"](), star, threads)
                except Exception as exc:  # noqa: BLE001
                    print(f"{key}/{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    times[name].append(float("nan"))
                    continue
                dt = time.perf_counter() - t0
                if expected is None and name == "sequential":
                    expected = out
                if expected is not None and not same(out, expected):
                    sys.exit(f"{key}/{name}: wrong result")
                # Not held through the next library's run (800 MB of arrays, for one workload).
                del out
                if r > 0:
                    times[name].append(dt)
            print(f"  {key}: round {r} done", file=sys.stderr)
        table[key] = {n: statistics.median(v) if v else float("nan") for n, v in times.items()}
        raw[key] = times

    header = "| workload | " + " | ".join(names) + " | perfkit vs joblib | perfkit vs mp.Pool |"
    print(header)
    print("|" + "---|" * (len(names) + 3))
    for key, t in table.items():
        cells = [f"{1000 * t[n]:.0f} ms" if t[n] == t[n] else "n/a" for n in names]
        pk = t["perfkit"]
        vs_joblib = t["joblib"] / pk
        vs_pool = t["mp.Pool"] / pk
        print(
            f"| {workloads[key]['title']} | " + " | ".join(cells) + f" | {vs_joblib:.1f}× | {vs_pool:.2f}× |"
        )
    print()
    goals = []

    def joblib_goal(key, label, at_least):
        if key in table:
            times, rounds = raw[key], len(raw[key]["perfkit"])
            ratio = table[key]["joblib"] / table[key]["perfkit"]
            paired = [a / b for a, b in zip(times["joblib"], times["perfkit"])]
            spread = f" (rounds {min(paired):.1f}–{max(paired):.1f}×)" if rounds > 1 else ""
            goals.append((label, ratio >= at_least, f"{ratio:.{2 if at_least < 2 else 1}f}×{spread}"))

    if "tiny" in table:
        t, times = table["tiny"], raw["tiny"]
        wins = sum(a <= b for a, b in zip(times["perfkit"], times["mp.Pool"]))
        goals.append(
            (
                "tiny: perfkit ≤ mp.Pool.map",
                t["perfkit"] <= t["mp.Pool"],
                f"{1000 * t['perfkit']:.0f} vs {1000 * t['mp.Pool']:.0f} ms "
                + f"(perfkit faster in {wins} of {len(times['perfkit'])} rounds)",
            )
        )
    joblib_goal("tiny", "tiny: ≥ 7× faster than joblib", 7)
    joblib_goal("arrays", "arrays: ≥ 10× faster than joblib", 10)
    ceiling = None

    def efficiency_goal(key, label):
        nonlocal ceiling
        if key not in table:
            return
        t, times = table[key], raw[key]
        eff = t["sequential"] / (n_jobs * t["perfkit"])
        paired = [s / (n_jobs * p) for s, p in zip(times["sequential"], times["perfkit"])]
        if ceiling is None:
            ceiling = machine_ceiling(pools["pool"], n_jobs, workloads["cpu"]["items"]()[0])
        # The same measure for every pool: what the machine allowed in those rounds.
        others = ", ".join(
            f"{name} {100 * t['sequential'] / (n_jobs * t[name]):.0f}%"
            for name in names
            if name not in ("sequential", "perfkit") and t[name] == t[name]
        )
        goals.append(
            (
                f"{label}: ≥ 95% of ideal speedup ({n_jobs}×)",
                eff >= 0.95,
                (
                    f"{100 * eff:.0f}% (speedup {t['sequential'] / t['perfkit']:.2f}×; "
                    f"rounds {100 * min(paired):.0f}–{100 * max(paired):.0f}%; {others}); "
                    f"the machine's own ceiling now: {100 * ceiling:.0f}%"
                ),
            )
        )

    efficiency_goal("cpu", "cpu, a tight int loop")
    efficiency_goal("cpumix", "cpu, real programs (pyperformance)")
    split = where_cpu_time_went(run, names, n_jobs, workloads["cpu"]["items"]()) if "cpu" in table else None
    joblib_goal("pandas", "pandas: ≥ 1.6× faster than joblib", 1.6)
    joblib_goal("threads", "threads: ≥ 10× faster than joblib threading", 10)
    print("| goal | met? | measured |")
    print("|---|---|---|")
    for g, ok, m in goals:
        print(f"| {g} | {'met' if ok else 'MISSED'} | {m} |")
    if split:
        shares, alone = split
        print(
            f"\nCPU-bound, where the time went (3 more calls each, tasks timing themselves; medians; "
            f"a task alone here: {1000 * alone:.0f} ms of CPU): "
            + "; ".join(
                f"{name} workers in tasks {100 * busy:.0f}% of the call, a task's CPU time {slower:.2f}× alone"
                for name, (busy, slower) in shares.items()
            )
        )
    for p in pools.values():
        if p is None:
            continue
        if hasattr(p, "terminate"):
            p.terminate()
        elif hasattr(p, "shutdown"):
            p.shutdown()
        if hasattr(p, "join"):
            try:
                p.join()
            except Exception:  # noqa: BLE001, S110
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
