"""Task functions of bench/parallel_bench.py (importable by every library's workers)."""

from __future__ import annotations

import time


def square(x):
    return x * x


def scalar_mean(x):
    """A numpy scalar result, as np.mean and friends return."""
    import numpy as np

    return np.float64(x) * 0.5


def array_sum(a):
    return float(a.sum())


def array_of(x):
    """An 8 MB array result (a transform of a chunk, say)."""
    import numpy as np

    return np.full(1 << 20, float(x))


def cpu_work(n):
    total = 0
    for i in range(n):
        total += (i * i) % 7
    return total


def timed_cpu_work(n):
    """cpu_work(n), returning the seconds it took where it ran."""
    t0 = time.perf_counter()
    cpu_work(n)
    return time.perf_counter() - t0


def timed_cpu_work_both(n):
    """cpu_work(n): (seconds it took where it ran, CPU seconds its thread used)."""
    t0, c0 = time.perf_counter(), time.thread_time()
    cpu_work(n)
    return time.perf_counter() - t0, time.thread_time() - c0


def calibrate_cpu(seconds):
    """Loop steps for cpu_work to take about `seconds` here."""
    n = 100_000
    while True:
        t0 = time.perf_counter()
        cpu_work(n)
        dt = time.perf_counter() - t0
        if dt > 0.02:
            return int(n * seconds / dt)
        n *= 2


_MIX = None


def pyperformance_mix(_):
    """One CPU-bound task made of real Python programs: pyperformance's
    call-heavy benchmarks (bench/_pyperformance.py, --quick sizes), each run
    once. Loaded on first use in each process. Returns what each returned,
    where that is a plain value (else its type's name), for the bench's check."""
    global _MIX
    if _MIX is None:
        import _pyperformance

        _MIX = [_pyperformance.load(name, quick=True) for name in _pyperformance.BENCHMARKS]
    out = []
    for w in _MIX:
        r = w.run()
        out.append(r if r is None or isinstance(r, (bool, int, float, str)) else type(r).__name__)
    return tuple(out)


def featurize(key, group):
    """Features of one group, as the issue's featurizeSubDF computes them."""
    a = group["a"]
    return (
        int(key),
        float(a.mean()),
        float(a.std()),
        float(group["b"].abs().max()),
        float((group["c"] > 50).mean()),
        int(group.shape[0]),
    )
