"""The same pure-Python loop in fresh interpreters that differ only in what
they did before it: how much of a CPU-bound figure is the process's
allocation history (where CPython's allocator puts the loop's objects), not
the pool that runs it.

    python bench/layout_lottery.py            # 8 fresh interpreters per history
    python bench/layout_lottery.py --runs 12

Each history is a few lines run before `_parallel_tasks.cpu_work` (the
benchmark's CPU-bound task) is imported and timed: the task's CPU time, the
fastest of 3 calls, in each of --runs fresh interpreters, the histories taken
in turn so that the machine's drift falls on all of them. No pool and no
perfkit code runs in the timed processes (one history imports perfkit's
modules as a worker does). Prints each history's median and its ratio to the
plain interpreter's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

HISTORIES = {
    "plain": "",
    "import cloudpickle": "import cloudpickle",
    "import cloudpickle; two more ints held": "import cloudpickle\nheld = [10**6 + 1, 10**6 + 2]",
    "import numpy": "import numpy",
    "what a perfkit worker imports": "import cloudpickle, mmap, pickle, perfkit._native, perfkit._pool_common",
}

TIMED = """
{history}
import sys, time
sys.path.insert(0, {here!r})
import _parallel_tasks as T


def cpu_seconds(n):
    c0 = time.thread_time()
    T.cpu_work(n)
    return time.thread_time() - c0


print(min(cpu_seconds({n}) for _ in range(3)))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=8, help="fresh interpreters per history (default 8)")
    ap.add_argument("--steps", type=int, default=3_000_000, help="loop steps of cpu_work (default 3,000,000)")
    args = ap.parse_args(argv)
    times = {name: [] for name in HISTORIES}
    for _ in range(args.runs):
        for name, history in HISTORIES.items():
            code = TIMED.format(history=history, here=HERE, n=args.steps)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            times[name].append(float(out.stdout))
    plain = statistics.median(times["plain"])
    cmd = "python bench/layout_lottery.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(
        f"`{cmd.strip()}` — Python {sys.version.split()[0]}; cpu_work({args.steps:,}); "
        f"{args.runs} fresh interpreters each\n"
    )
    print("| before the task | median CPU time | against plain | fastest–slowest |")
    print("|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(
            f"| {name} | {1000 * med:.0f} ms | {med / plain:.2f}× | "
            f"{1000 * min(values):.0f}–{1000 * max(values):.0f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
