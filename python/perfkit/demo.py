"""``perfkit demo``: profile a small text-scoring pipeline and show where its time goes."""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time

from perfkit import _native
from perfkit.profiler import Profiler

DEMO_PROFILE = "perfkit-demo.prof"


def make_corpus(n_docs: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    return [" ".join(rng.choice(vocab) for _ in range(200)) for _ in range(n_docs)]


def tokenize(text: str) -> list[str]:
    return text.lower().split()


def word_score(word: str) -> int:
    h = 0
    for ch in word:
        h = (h * 31 + ord(ch)) % 1_000_003
    return h


def document_features(doc: str) -> float:
    words = tokenize(doc)
    return sum(word_score(w) for w in words) / len(words)


def run_pipeline(docs: list[str]) -> list[float]:
    return [document_features(d) for d in docs]


def cache_step(docs: list[str], step=None, location: str | None = None) -> float:
    """Caches a demo step (by default the scoring, ``run_pipeline``) with
    perfkit.Memory: runs it twice, the second time served from the cache, and
    reports the time saved. ``location`` defaults to a temporary directory,
    removed afterwards. Returns the seconds saved."""
    import shutil
    import tempfile

    from perfkit.memory import Memory

    step = step or run_pipeline
    own_location = location is None
    location = location or tempfile.mkdtemp(prefix="perfkit-demo-cache-")
    try:
        cached = Memory(location).cache(step)
        t0 = time.perf_counter()
        first = cached(docs)
        t1 = time.perf_counter()
        second = cached(docs)
        t2 = time.perf_counter()
        if first != second:
            raise AssertionError("the cached result differs from the computed one")
        computed, served = t1 - t0, t2 - t1
        print(
            f"\nCached with perfkit.Memory: {step.__name__}() took {computed:.3f} s computed, "
            f"{served * 1e3:.1f} ms from the cache: {computed - served:.3f} s saved "
            f"({computed / max(served, 1e-9):.0f}x faster)."
        )
        return computed - served
    finally:
        if own_location:
            shutil.rmtree(location, ignore_errors=True)


def main() -> int:
    docs = make_corpus(400)
    print(f"perfkit demo: scoring {len(docs)} documents, profiled by perfkit.Profiler ...")
    profiler = Profiler()
    t0 = time.perf_counter()
    with profiler:
        run_pipeline(docs)
    elapsed = time.perf_counter() - t0
    path = DEMO_PROFILE
    try:
        profiler.dump_stats(path)
    except OSError as e:
        # A directory the user cannot write to (a read-only checkout): the
        # demo goes on with its profile in the temporary directory.
        path = os.path.join(tempfile.gettempdir(), DEMO_PROFILE)
        print(f"(cannot write {DEMO_PROFILE} here: {e.strerror}; writing {path} instead)")
        profiler.dump_stats(path)
    print(f"done in {elapsed:.2f} s; profile written to {path}\n")
    print("Hot spots (own time):")
    sys.stdout.flush()
    code = _native.cli_main(["perfkit", "stats", path, "--sort", "tottime", "--limit", "8"])
    if code != 0:
        return code
    stats = profiler.recording().stats_dict()
    hottest = max(stats.items(), key=lambda kv: kv[1][2])
    (file, line, name), (_cc, nc, tt, _ct, _callers) = hottest
    total = sum(v[2] for v in stats.values()) or 1.0
    print(
        f"The hottest function is {name}() ({file}:{line}): {nc} calls, {tt:.3f} s own time, "
        f"{100 * tt / total:.0f}% of the run."
    )
    big = docs * 10  # enough work for the workers to matter
    parallel_step(big, name)
    cache_step(big, step=run_pipeline_parallel)
    print(
        f"\nNext: perfkit view {path}   (icicle, sunburst and the stats table in your browser; "
        f"perfkit stats {path} in the terminal)"
    )
    return 0


def run_pipeline_parallel(docs: list[str], n_jobs: int = -1, progress: bool = True) -> list[float]:
    """``run_pipeline`` on every core: the demo's hot loop with perfkit.Parallel."""
    from perfkit.parallel import Parallel, delayed

    return Parallel(n_jobs=n_jobs, progress=progress)(delayed(document_features)(d) for d in docs)


def parallel_step(docs: list[str], hottest: str = "word_score", n_jobs: int = -1) -> float:
    """Runs the hot loop, ``run_pipeline``, with perfkit.Parallel (progress bar
    on stderr), checks the result against the sequential run, and reports the
    measured speedup. Returns the speedup."""
    from perfkit.parallel import cpu_count

    n = cpu_count() if n_jobs == -1 else n_jobs
    print(
        f"\nParallelizing the hot loop ({hottest}() under run_pipeline) over {len(docs)} documents "
        f"with perfkit.Parallel(n_jobs={n_jobs}):"
    )
    print("    Parallel(n_jobs=-1, progress=True)([delayed(document_features)(d) for d in docs])")
    sys.stdout.flush()
    t0 = time.perf_counter()
    sequential = run_pipeline(docs)
    t_seq = time.perf_counter() - t0
    # Start the workers outside the clock (perfkit keeps them for the next call, as joblib does).
    run_pipeline_parallel(docs[:8], n_jobs, progress=False)
    t0 = time.perf_counter()
    results = run_pipeline_parallel(docs, n_jobs)
    t_par = time.perf_counter() - t0
    if results != sequential:
        print("perfkit demo: the parallel results differ from the sequential ones", file=sys.stderr)
        return 0.0
    speedup = t_seq / t_par if t_par > 0 else float("inf")
    print(
        f"sequential {t_seq:.2f} s, perfkit.Parallel on {n} worker processes {t_par:.2f} s: "
        f"{speedup_words(speedup)} (same results)."
    )
    if n < 2:
        print("(this machine offers one CPU to this process, so there is nothing to gain here)")
    elif speedup < 1 and (busy := busy_cpus_hint(n)):
        print(busy)
    return speedup


def speedup_words(speedup: float) -> str:
    """'1.84x faster', or '1.08x slower' rather than a speedup under 1."""
    if speedup >= 1:
        return f"{speedup:.2f}x faster"
    return f"{1 / speedup:.2f}x slower"


def busy_cpus_hint(n_workers: int) -> str | None:
    """Why a parallel run came out slower, when the machine says so: more
    runnable processes over the last minute than the demo's own workers and
    caller (the load average counts those too)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None
    if load <= n_workers + 1:
        return None
    return (
        f"(other programs were using the CPUs: a load average of {load:.1f} over the last minute, "
        f"on {os.cpu_count()} CPUs; run the demo again on an idle machine to see the speedup)"
    )


if __name__ == "__main__":
    sys.exit(main())
