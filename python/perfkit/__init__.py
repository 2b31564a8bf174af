"""perfkit: the performance toolkit for Python, with a Rust core.

Profile with :class:`Profiler` / :func:`profile` / :func:`run` (cProfile's API,
cheaper, and files that pstats and snakeviz open); the ``perfkit`` command
records, prints, views and exports profiles. :class:`Parallel` / :func:`delayed`
run a loop on many cores (joblib's API); :class:`Memory` caches results on disk
(joblib.Memory's API).
"""

import atexit
import os
import sys

from perfkit._native import ProfileError, Recording, __version__, load
from perfkit._native import cache_after_fork as _cache_after_fork

# The rest is imported at first use (PEP 562): `perfkit.parallel` and
# `perfkit.memory` pull in ~90 modules (multiprocessing, concurrent.futures,
# inspect, json, …), 45 ms and ~6 MB, which every worker process of
# perfkit.Parallel (started as `python -m perfkit._worker`, which imports this
# package first) and every `perfkit stats` would otherwise pay without using them.
_LAZY = {
    "CacheWarning": "perfkit.memory",
    "MemorizedResult": "perfkit.memory",
    "Memory": "perfkit.memory",
    "expires_after": "perfkit.memory",
    "hash": "perfkit.memory",
    "Parallel": "perfkit.parallel",
    "ParallelTimeoutError": "perfkit.parallel",
    "UnpicklableError": "perfkit.parallel",
    "WorkerCrashedError": "perfkit.parallel",
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
    from perfkit.memory import CacheWarning, MemorizedResult, Memory, expires_after, hash
    from perfkit.parallel import (
        Parallel,
        ParallelTimeoutError,
        UnpicklableError,
        WorkerCrashedError,
        cpu_count,
        delayed,
        effective_n_jobs,
        parallel_backend,
        parallel_config,
        wrap_non_picklable_objects,
    )
    from perfkit.profiler import Profiler, profile, run, runctx
else:
    # Hidden from type checkers, which would take a module __getattr__ for
    # "any name exists" and stop flagging `perfkit.Paralel`.

    def __getattr__(name):
        module = _LAZY.get(name)
        if module is None and "." in name:
            raise AttributeError(f"module 'perfkit' has no attribute {name!r}")
        if module is not None:
            value = getattr(_import(module), name)
        else:
            # `import perfkit; perfkit.memory.CacheWarning`: a submodule, bound
            # here as the eager imports used to bind it.
            try:
                value = _import(f"perfkit.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"perfkit.{name}":
                    raise
                raise AttributeError(f"module 'perfkit' has no attribute {name!r}") from None
        globals()[name] = value  # looked up once
        return value

    def __dir__():
        return sorted({*globals(), *_LAZY} - {"TYPE_CHECKING", "atexit", "os", "sys"})


def load_ipython_extension(ipython):
    """``%load_ext perfkit``: the ``%perfkit`` and ``%%perfkit`` magics.

    IPython looks for this function in the package it is given; the magics
    live in ``perfkit._ipython``, imported here only, so that ``import
    perfkit`` does not import IPython."""
    from perfkit._ipython import load_ipython_extension

    load_ipython_extension(ipython)


def _import(name):
    import importlib

    return importlib.import_module(name)


# perfkit.Memory's hooks into the process, set here rather than at
# perfkit.memory's first use: a forked child that first uses Memory after the
# fork must still know it is one (it writes at once, having no atexit), and
# what a program's own atexit handlers store (registered after `import
# perfkit`, so run before this one) must still be flushed to disk.
_forked_child = False


def _after_fork_in_child():
    global _forked_child
    _forked_child = True
    _cache_after_fork()


def _flush_cache_writes():
    memory = sys.modules.get("perfkit.memory")
    if memory is not None:  # (else nothing was stored)
        memory._flush_writes()


atexit.register(_flush_cache_writes)
os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = [
    "CacheWarning",
    "MemorizedResult",
    "Memory",
    "Parallel",
    "ParallelTimeoutError",
    "ProfileError",
    "Profiler",
    "Recording",
    "UnpicklableError",
    "WorkerCrashedError",
    "__version__",
    "cpu_count",
    "delayed",
    "effective_n_jobs",
    "expires_after",
    "hash",
    "load",
    "parallel_backend",
    "parallel_config",
    "profile",
    "run",
    "runctx",
    "wrap_non_picklable_objects",
]
