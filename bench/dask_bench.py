"""perfkit.Parallel against joblib.Parallel, both on backend="dask", in one run.

    python bench/dask_bench.py               # 5 rounds, a LocalCluster of 2 workers × 1 thread
    python bench/dask_bench.py --rounds 3 --workers 4

Both libraries run the same tasks on the same LocalCluster (processes, on
127.0.0.1), each call made inside its own library's
``parallel_config(backend="dask")``; every result is checked against the
sequential one (floats to rounding: numpy sums an array in another
order where its copy is aligned otherwise). Each round runs every workload once per library, in turn;
the table shows medians in ms. Loopback moves data far faster than a
network, which understates what sending a shared argument once saves.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _parallel_tasks as T
import joblib
import perfkit
from parallel_bench import same


def item_of(array, i):
    return float(array[i])


def workloads():
    shared = np.arange(4 << 20, dtype=np.float64)  # 32 MB
    arrays = [np.random.default_rng(i).random(1 << 20) for i in range(40)]  # 40 × 8 MB
    return {
        "10,000 tiny tasks (x*x)": (T.square, lambda: ((i,) for i in range(10_000))),
        "40 tasks sharing one 32 MB array": (item_of, lambda: ((shared, i) for i in range(40))),
        "40 arrays of 8 MB, sum each": (T.array_sum, lambda: ((a,) for a in arrays)),
        "16 CPU-bound tasks (~0.1 s each)": (T.cpu_work, lambda: ((CPU_STEPS,) for _ in range(16))),
    }


CPU_STEPS = 0


def run(lib, fn, args):
    with lib.parallel_config(backend="dask"):
        return lib.Parallel()(lib.delayed(fn)(*a) for a in args())


def main(argv=None):
    global CPU_STEPS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    import distributed

    warnings.filterwarnings("ignore", module="distributed")
    CPU_STEPS = T.calibrate_cpu(0.1)
    libs = {"perfkit": perfkit, "joblib": joblib}
    with (
        distributed.LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster),
    ):
        cmd = "python bench/dask_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        print(
            f"`{cmd.strip()}` — perfkit {perfkit.__version__}, joblib {joblib.__version__}, "
            f"dask.distributed {distributed.__version__}; LocalCluster of {args.workers} workers × 1 thread; "
            f"median of {args.rounds} round(s)\n"
        )
        print("| workload | perfkit | joblib | perfkit vs joblib |")
        print("|---|---|---|---|")
        for title, (fn, task_args) in workloads().items():
            expected = [fn(*a) for a in task_args()]
            times = {name: [] for name in libs}
            for r in range(args.rounds + 1):  # round 0: warm-up, not recorded
                for name, lib in libs.items():
                    t0 = time.perf_counter()
                    out = run(lib, fn, task_args)
                    dt = time.perf_counter() - t0
                    if not same(out, expected):
                        sys.exit(f"{title}/{name}: wrong result")
                    del out
                    if r:
                        times[name].append(dt)
            pk, jl = (statistics.median(times[n]) for n in libs)
            print(f"| {title} | {1000 * pk:.0f} ms | {1000 * jl:.0f} ms | {jl / pk:.1f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
