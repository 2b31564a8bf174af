"""``perfkit demo``: profile a small text-scoring pipeline and show where its time goes."""

from __future__ import annotations

import random
import sys
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
    profiler.dump_stats(DEMO_PROFILE)
    print(f"done in {elapsed:.2f} s; profile written to {DEMO_PROFILE}\n")
    print("Hot spots (own time):")
    sys.stdout.flush()
    code = _native.cli_main(["perfkit", "stats", DEMO_PROFILE, "--sort", "tottime", "--limit", "8"])
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
    print(f"Next: perfkit stats {DEMO_PROFILE} --sort cumulative   (or open {DEMO_PROFILE} in snakeviz)")
    cache_step(docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
