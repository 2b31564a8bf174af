"""perfkit: the performance toolkit for Python, with a Rust core.

Profile with :class:`Profiler` / :func:`profile` / :func:`run` (cProfile's API,
cheaper, and files that pstats and snakeviz open); the ``perfkit`` command
records, prints, views and exports profiles. :class:`Parallel` / :func:`delayed`
run a loop on many cores (joblib's API); :class:`Memory` caches results on disk
(joblib.Memory's API).
"""

from __future__ import annotations

import importlib

from perfkit._native import ProfileError, Recording, __version__, load

# The rest is imported at first use (PEP 562): `perfkit.parallel` and
# `perfkit.memory` pull in ~90 modules (multiprocessing, concurrent.futures,
# inspect, json, …), 45 ms and ~6 MB, which every worker process of
# perfkit.Parallel (started as `python -m perfkit._worker`, which imports this
# package first) and every `perfkit stats` would otherwise pay without using them.
_LAZY = {
    "Memory": "perfkit.memory",
    "hash": "perfkit.memory",
    "Parallel": "perfkit.parallel",
    "cpu_count": "perfkit.parallel",
    "delayed": "perfkit.parallel",
    "effective_n_jobs": "perfkit.parallel",
    "parallel_backend": "perfkit.parallel",
    "parallel_config": "perfkit.parallel",
    "wrap_non_picklable_objects": "perfkit.parallel",
    "Profiler": "perfkit.profiler",
    "profile": "perfkit.profiler",
    "run": "perfkit.profiler",
    "runctx": "perfkit.profiler",
}

# (not typing's: importing typing costs a worker another ~9 ms; type checkers
# read a module's own TYPE_CHECKING = False the same way)
TYPE_CHECKING = False
if TYPE_CHECKING:
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


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'perfkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted({*globals(), *_LAZY})


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
