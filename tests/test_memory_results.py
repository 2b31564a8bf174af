"""What a cached result is once returned by a hit, side by side with joblib.Memory."""

from __future__ import annotations

import gc
import tracemalloc

import joblib
import numpy as np
import perfkit
import pytest


def memory_of(library, location):
    return perfkit.Memory(location) if library == "perfkit" else joblib.Memory(location, verbose=0)


# Sizes of the large array in the result: an entry read into place (16 MB),
# one read into a buffer of its size (800 KB, also served from the
# background writer's queue), a small one read with one read (48 KB).
@pytest.mark.parametrize("large_items", [2_000_000, 100_000, 6_000])
@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_a_small_part_kept_from_hits_does_not_keep_the_whole_results_alive(tmp_path, library, large_items):
    """A loop that keeps a small piece of each hit's result (``f(x)["metrics"]``)
    holds only those pieces in joblib, whose arrays are each their own
    memory; perfkit's were all views of one buffer holding the whole entry,
    so each kept piece held every large array of its result."""
    mem = memory_of(library, tmp_path)

    @mem.cache
    def result(n):
        return [np.ones(n), np.arange(4)]

    result(1)  # (a function's first store is written at once; the next ones may be queued)
    result(large_items)
    gc.collect()
    tracemalloc.start()
    try:
        kept = [result(large_items)[1] for _ in range(10)]
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(k.tolist() == [0, 1, 2, 3] for k in kept)
    # Ten small arrays (and whatever the library keeps of its own), not ten large ones.
    assert held < large_items * 8
