"""How perfkit.Parallel sends pandas DataFrames: by their blocks (perfkit._frames)
against pickle's own way, per frame and end to end.

    python bench/frames_bench.py              # 5 rounds
    python bench/frames_bench.py --rounds 3

Per frame: a batch of 16 groupby groups (495 rows, 4 columns) pickled and
unpickled as perfkit's workers do, best of 5 repeats. End to end: the
issue's groupby example (1,000,000 rows into 2,000 groups) through
perfkit.Parallel with each way, joblib and the sequential loop, in rotating
order; medians of the rounds.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time
import timeit

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _parallel_tasks as T
import joblib
from perfkit import Parallel, _frames, delayed
from perfkit._pool_common import dumps

FAST = _frames.frame_reducers


def pickles_way():
    return None


def per_frame_us(stmt, scope, frames):
    return min(timeit.repeat(stmt, number=500, repeat=5, globals=scope)) / 500 / frames * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if FAST() is None:
        sys.exit(
            "pandas.api.internals.create_dataframe_from_blocks is missing (pandas < 3.0): nothing to compare"
        )
    rng = np.random.default_rng(0)
    n = 16 * 495
    small = pd.DataFrame({"k": np.arange(n) % 16, "a": rng.random(n), "b": rng.random(n), "c": np.arange(n)})
    batch = [(k, g) for k, g in small.groupby("k")]
    print(f"pandas {pd.__version__}, Python {sys.version.split()[0]}\n")
    print("| per frame (batch of 16 groups) | by blocks | pickle's way | ratio |")
    print("|---|---|---|---|")
    times = {}
    for name, table in (("blocks", FAST), ("pickle", pickles_way)):
        _frames.frame_reducers = table
        payload, buffers = dumps(batch, 64 * 1024)
        assert not buffers  # groups this small travel in band
        scope = {"dumps": dumps, "batch": batch, "pickle": pickle, "payload": payload}
        times[name] = (
            per_frame_us("dumps(batch, 65536)", scope, len(batch)),
            per_frame_us("pickle.loads(payload)", scope, len(batch)),
        )
    _frames.frame_reducers = FAST
    for i, what in enumerate(("pickle (caller)", "unpickle (worker)")):
        fast, slow = times["blocks"][i], times["pickle"][i]
        print(f"| {what} | {fast:.1f} µs | {slow:.1f} µs | {slow / fast:.2f}× |")

    rows = 1_000_000
    df = pd.DataFrame(
        {
            "fin_study_id": rng.integers(0, 2000, rows),
            "a": rng.random(rows),
            "b": rng.normal(size=rows),
            "c": rng.integers(0, 100, rows),
        }
    )

    def perfkit_with(table):
        def run():
            _frames.frame_reducers = table
            try:
                return Parallel(n_jobs=2)(delayed(T.featurize)(k, g) for k, g in df.groupby("fin_study_id"))
            finally:
                _frames.frame_reducers = FAST

        return run

    configs = {
        "sequential": lambda: [T.featurize(k, g) for k, g in df.groupby("fin_study_id")],
        "perfkit, by blocks": perfkit_with(FAST),
        "perfkit, pickle's way": perfkit_with(pickles_way),
        "joblib": lambda: joblib.Parallel(n_jobs=2)(
            joblib.delayed(T.featurize)(k, g) for k, g in df.groupby("fin_study_id")
        ),
    }
    names = list(configs)
    measured = {name: [] for name in names}
    expected = None
    for r in range(args.rounds + 1):  # round 0 warms the pools up
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            out = configs[name]()
            dt = time.perf_counter() - t0
            if expected is None:
                expected = out
            elif out != expected:
                sys.exit(f"{name}: wrong result")
            if r:
                measured[name].append(dt)
    print(f"\n| groupby example, n_jobs=2, median of {args.rounds} | ms | joblib / this |")
    print("|---|---|---|")
    joblib_ms = statistics.median(measured["joblib"]) * 1000
    for name in names:
        ms = statistics.median(measured[name]) * 1000
        print(f"| {name} | {ms:.0f} | {joblib_ms / ms:.2f}× |")


if __name__ == "__main__":
    main()
