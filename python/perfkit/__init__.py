"""perfkit: the performance toolkit for Python, with a Rust core.

Profile with :class:`Profiler` / :func:`profile` / :func:`run` (cProfile's API,
cheaper, and files that pstats and snakeviz open); the ``perfkit`` command
records, prints, views and exports profiles. :class:`Parallel` / :func:`delayed`
run a loop on many cores (joblib's API); :class:`Memory` caches results on disk
(joblib.Memory's API).
"""

from perfkit._native import ProfileError, Recording, __version__, load
from perfkit.memory import Memory, hash
from perfkit.parallel import (
    Parallel,
    cpu_count,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    wrap_non_picklable_objects,
)
from perfkit.profiler import Profiler, profile, run, runctx

__all__ = [
    "Memory",
    "Parallel",
    "ProfileError",
    "Profiler",
    "Recording",
    "__version__",
    "cpu_count",
    "delayed",
    "effective_n_jobs",
    "hash",
    "load",
    "parallel_backend",
    "parallel_config",
    "profile",
    "run",
    "runctx",
    "wrap_non_picklable_objects",
]
