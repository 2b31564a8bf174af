"""joblib's ``Parallel`` / ``delayed`` / ``parallel_config`` / ``cpu_count``, on perfkit's Rust pool.

    from perfkit import Parallel, delayed
    results = Parallel(n_jobs=2)(delayed(f)(x) for x in items)

Backends: ``"processes"`` (default; joblib's ``"loky"`` and ``"multiprocessing"``
are aliases) runs tasks in a pool of fresh worker interpreters that is kept
and reused across calls; ``"threads"`` (alias ``"threading"``) runs batches on
a thread pool; ``"sequential"`` runs inline; ``"dask"`` submits batches to an
existing ``dask.distributed`` Client.

The process engine lives in Rust (crate perfkit-pool): spawning, pipes,
shared memory, supervision. This module does what needs Python: resolving
arguments as joblib does, pickling (protocol 5, large buffers out of band;
the function is cloudpickled once per call), batching, ordering, errors.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import itertools
import linecache
import math
import mmap
import multiprocessing
import numbers
import os
import pickle
import queue
import re
import sys
import threading
import time
import warnings
import weakref
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from types import MappingProxyType

from perfkit import _native
from perfkit._pool_common import (
    FULL,
    SINGLE,
    SINGLE_PACKED,
    STREAMED,
    MainNames,
    MainUnpickler,
    StridedCopies,
    cloudpickle_dumps,
    dumps,
    fewer_young_collections,
    task_label,
    unpack_results,
)
from perfkit._typing import Generic, R, ReturnAs, overload

__all__ = [
    "Parallel",
    "ParallelTimeoutError",
    "TerminatedWorkerError",
    "UnpicklableError",
    "WorkerCrashedError",
    "cpu_count",
    "delayed",
    "effective_n_jobs",
    "parallel_backend",
    "parallel_config",
    "wrap_non_picklable_objects",
]

BACKEND_ALIASES = {
    "processes": "processes",
    "loky": "processes",
    "multiprocessing": "processes",
    "threads": "threads",
    "threading": "threads",
    "sequential": "sequential",
    "dask": "dask",
}
RETURN_AS = ("list", "generator", "generator_unordered")

# (not typing's at run time: see perfkit._typing)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable
    from typing import Any, Literal

    from typing_extensions import Self, TypeAlias

    # A task: what delayed(f)(*args, **kwargs) returns.
    _Task: TypeAlias = "tuple[Callable[..., R], tuple[Any, ...], dict[str, Any]]"


class WorkerCrashedError(BrokenProcessPool):
    """A worker process died while running a task (killed, segfault, os._exit).
    A ``concurrent.futures.process.BrokenProcessPool`` (a RuntimeError), as
    joblib's ``TerminatedWorkerError`` is: what handlers of it catch."""


TerminatedWorkerError = WorkerCrashedError  # joblib's name for the same failure


class RemoteTraceback(Exception):
    """Carries a worker's traceback; set as ``__cause__`` of the re-raised exception."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


class TaskError(Exception):
    """Stands in for a task's exception that could not be sent back as itself."""


class ParallelTimeoutError(multiprocessing.TimeoutError, TimeoutError):
    """A call's ``timeout=`` ran out. Both timeouts' type: joblib raises
    multiprocessing's, which is not the builtin ``TimeoutError``."""


class UnpicklableError(pickle.PicklingError, TypeError):
    """A task's function, arguments or result could not be pickled. Also a
    TypeError, what pickle itself raises for most such objects (a lock, a
    file) and joblib passes on."""


# --------------------------------------------------------------------------- cpu_count


def _multiprocessing_disabled() -> bool:
    """joblib's JOBLIB_MULTIPROCESSING=0: no worker processes (cpu_count() is
    1, and the processes backend runs inline)."""
    try:
        return int(os.environ.get("JOBLIB_MULTIPROCESSING", "1")) == 0
    except ValueError:
        return False


_CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_cpu_quota() -> int | None:
    """The CPUs a cgroup's bandwidth limit allows (v2's cpu.max, else v1's
    cfs quota and period, as loky reads them: ``docker --cpus=2``); None
    where there is none."""
    try:
        with open(os.path.join(_CGROUP_ROOT, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open(os.path.join(_CGROUP_ROOT, "cpu", "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()
            with open(os.path.join(_CGROUP_ROOT, "cpu", "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = int(quota), int(period)  # ("max" in v2, -1 in v1: no limit)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(1, math.ceil(quota_us / period_us))


def cpu_count(only_physical_cores: bool = False) -> int:
    """CPUs this process may use: affinity mask and cgroup CPU quota, and
    at most LOKY_MAX_CPU_COUNT (as joblib's; 1 under JOBLIB_MULTIPROCESSING=0)."""
    if _multiprocessing_disabled():
        return 1
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, quota)
    if only_physical_cores:
        try:
            cores = set()
            physical = core = None
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("physical id"):
                        physical = line.split(":")[1].strip()
                    elif line.startswith("core id"):
                        core = line.split(":")[1].strip()
                        cores.add((physical, core))
            if cores:
                n = min(n, len(cores))
        except OSError:
            pass
    limit = os.environ.get("LOKY_MAX_CPU_COUNT")
    if limit:
        try:
            n = min(n, int(limit))
        except ValueError:
            _warn_once(
                f"LOKY_MAX_CPU_COUNT={limit!r} is not a whole number; ignored (joblib raises ValueError)"
            )
    return max(1, n)


_warned: set = set()


def _warn_once(message: str) -> None:
    """A warning about the environment, once per process and message (it is
    read at every call)."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------- delayed


# joblib's delayed: `delayed(f)(*args, **kwargs)` returns `(f, args, kwargs)`.
# Implemented in Rust (perfkit._native.delayed): it runs once per task. It
# hands out the same wrapper again for the same plain function, and keeps
# that wrapper until the end of the current Parallel call (see _forgetting).
delayed = _native.delayed


def wrap_non_picklable_objects(obj, keep_wrapper: bool = True):
    """joblib's ``wrap_non_picklable_objects``: ``obj`` (a function, often used
    as a decorator, or any object) wrapped so that plain pickle sends it by
    value through cloudpickle, as multiprocessing or another pool needs.

    perfkit.Parallel needs no wrapping: it falls back to cloudpickle for what
    pickle refuses. The wrapper calls and reads attributes through to
    ``obj``; unpickled, it is wrapped again unless ``keep_wrapper=False``. A
    class is wrapped as joblib does: its instances come out wrapped."""
    if isinstance(obj, type):
        cls = obj

        callable_instances = any("__call__" in vars(k) for k in cls.__mro__[:-1])
        base = _CloudpickledCallable if callable_instances else _CloudpickledObject

        class _WrappedClass(base):
            def __init__(self, *args, **kwargs):
                super().__init__(cls(*args, **kwargs), keep_wrapper)

        _WrappedClass.__name__ = _WrappedClass.__qualname__ = cls.__name__
        return _WrappedClass
    kind = _CloudpickledCallable if callable(obj) else _CloudpickledObject
    return kind(obj, keep_wrapper)


class _CloudpickledObject:
    __slots__ = ("_keep_wrapper", "_obj")

    def __init__(self, obj, keep_wrapper=True):
        self._obj = obj
        self._keep_wrapper = keep_wrapper

    def __reduce__(self):
        import cloudpickle

        return _load_cloudpickled, (cloudpickle.dumps(self._obj, protocol=5), self._keep_wrapper)

    def __getattr__(self, name):
        if name in ("_obj", "_keep_wrapper"):  # not yet set (a copy being made): not the wrapped object's
            raise AttributeError(name)
        return getattr(self._obj, name)

    def __repr__(self) -> str:
        return f"wrap_non_picklable_objects({self._obj!r})"


class _CloudpickledCallable(_CloudpickledObject):
    __slots__ = ()

    def __call__(self, *args, **kwargs):
        return self._obj(*args, **kwargs)


def _load_cloudpickled(data, keep_wrapper):
    obj = pickle.loads(data)
    if not keep_wrapper:
        return obj
    return (_CloudpickledCallable if callable(obj) else _CloudpickledObject)(obj, keep_wrapper)


# --------------------------------------------------------------------------- parallel_config

# The active parallel_config values; never mutated in place (each level sets a merged copy).
_config = contextvars.ContextVar("perfkit_parallel_config", default=MappingProxyType({}))


class _Unset:
    """The default of a parameter left to the enclosing ``parallel_config``
    (joblib shows ``default(None)`` there); a name in ``help()``, not an address."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<parallel_config's>"


_UNSET: Any = _Unset()
# Set in worker processes (by the pool) and in threads-backend tasks: nested calls stay inside this share.
_nested = threading.local()


class parallel_config:
    """Context manager setting defaults for ``Parallel`` calls inside it (joblib's ``parallel_config``).

    Keys: backend, n_jobs, verbose, max_nbytes, prefer, require,
    inner_max_num_threads, progress, and backend parameters (for ``dask``:
    ``client=``, and ``scatter=[...]``, objects sent to every worker once,
    for the calls inside). Explicit ``Parallel(...)`` arguments win.
    """

    def __init__(
        self,
        backend: str | None = None,
        *,
        n_jobs: int | None = _UNSET,
        verbose: int | None = None,
        temp_folder: str | os.PathLike[str] | None = None,
        max_nbytes: int | str | None = None,
        mmap_mode: str | None = None,
        prefer: Literal["processes", "threads"] | None = None,
        require: Literal["sharedmem"] | None = None,
        inner_max_num_threads: int | None = None,
        progress: bool | None = None,
        **backend_params: Any,
    ) -> None:
        if backend is not None and not isinstance(backend, str):
            raise TypeError("parallel_config(backend=...) takes a backend name")
        if backend is not None and backend not in BACKEND_ALIASES:
            raise ValueError(f"unknown backend {backend!r}; use one of {sorted(BACKEND_ALIASES)}")
        _check_prefer_require(prefer, require)
        given = {
            "backend": backend,
            "verbose": verbose,
            "max_nbytes": max_nbytes,
            "prefer": prefer,
            "require": require,
            "inner_max_num_threads": inner_max_num_threads,
            "progress": progress,
        }
        self._values = {k: v for k, v in given.items() if v is not None}
        if n_jobs is not _UNSET:
            # (an explicit None too, as in joblib: an inner config's n_jobs=None is 1 again)
            self._values["n_jobs"] = n_jobs
        if backend_params and backend is None:
            # joblib's check too: a misspelt keyword (n_job=4) is not a backend's parameter.
            raise ValueError(
                f"parallel_config: unknown keyword(s) {', '.join(sorted(backend_params))}; "
                "a backend's parameters go with backend=..."
            )
        if backend_params and BACKEND_ALIASES.get(backend) == "dask":
            from perfkit._dask import check_params

            check_params(backend_params)
        if backend_params.get("scatter") is not None:
            from perfkit._dask import GivenData

            backend_params["scatter"] = GivenData(backend_params["scatter"])
        if backend_params:
            self._values["backend_params"] = backend_params
        self._token = None
        self._previous = None
        # Like joblib, the configuration is also active without a `with` (until unregister).
        self.__enter__()

    def __enter__(self) -> Self:
        if self._token is None:
            merged = dict(_config.get())
            merged.update(self._values)
            self._token = _config.set(merged)
        return self

    def __exit__(self, *exc: object) -> None:
        self.unregister()

    def unregister(self) -> None:
        """Ends this configuration, as leaving its ``with`` block does (joblib's)."""
        if self._token is not None:
            _config.reset(self._token)
            self._token = None


class parallel_backend(parallel_config):
    """joblib's older spelling of :class:`parallel_config` (n_jobs defaults to
    -1); ``with parallel_backend(...) as (backend, n_jobs)`` gives the
    backend's name and n_jobs, where joblib gives its backend object."""

    def __init__(
        self,
        backend: str,
        n_jobs: int | None = -1,
        inner_max_num_threads: int | None = None,
        **backend_params: Any,
    ) -> None:
        # (set first: the base class's __init__ enters, as joblib's is active without a `with`)
        self._backend_and_n_jobs = (BACKEND_ALIASES.get(backend, backend), n_jobs)
        super().__init__(
            backend, n_jobs=n_jobs, inner_max_num_threads=inner_max_num_threads, **backend_params
        )

    def __enter__(self) -> tuple[str, int | None]:  # type: ignore[override]  # (joblib's too)
        super().__enter__()
        return self._backend_and_n_jobs


def effective_n_jobs(n_jobs: int | None = -1) -> int:
    """How many tasks ``Parallel(n_jobs=n_jobs)`` runs at once here (joblib's
    ``effective_n_jobs``): negative values count back from the CPUs, None
    takes the active ``parallel_config``'s n_jobs, the sequential backend and
    nesting inside a worker apply; for ``dask``, the cluster's threads."""
    if n_jobs == 1:
        return 1
    backend, n = Parallel(n_jobs=n_jobs)._resolve()
    if backend != "dask":
        return n
    return _dask_threads(_dask_client())


def _dask_threads(client) -> int:
    return max(1, sum(client.nthreads().values()))


def _as_n_jobs(value):
    """n_jobs as joblib reads it: whatever int() takes (``"4"`` from an
    environment variable, ``4.0`` from a computation), None left as None."""
    if value is None:
        return None
    try:
        n_jobs = int(value)
    except (ValueError, OverflowError):
        raise ValueError(f"n_jobs={value!r} could not be converted to int") from None
    except TypeError:
        raise TypeError(f"n_jobs must be an int or None, got {value!r}") from None
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 has no meaning; use n_jobs=1 to run inline or -1 for all CPUs")
    return n_jobs


def _check_prefer_require(prefer, require):
    if prefer not in (None, "threads", "processes"):
        raise ValueError(f"prefer={prefer!r}: use 'threads', 'processes' or None")
    if require not in (None, "sharedmem"):
        raise ValueError(f"require={require!r}: use 'sharedmem' or None")
    if prefer == "processes" and require == "sharedmem":
        raise ValueError("prefer == 'processes' and require == 'sharedmem' are inconsistent settings")


def _parse_nbytes(value) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return int(value)  # 1e6, as joblib takes it
        text = str(value).strip().upper()
        units = {"K": 1024, "M": 1024**2, "G": 1024**3}
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except (ValueError, OverflowError):
        raise ValueError(f"max_nbytes={value!r}: use a byte count, '64K', '1M' or None") from None


# --------------------------------------------------------------------------- the process pool

_pool_lock = threading.Lock()
_shared_pool = None  # (key, WorkerPool): the module-level pool reused by successive calls
_spare_lock = threading.Lock()
_spare_pool = None  # (key, WorkerPool): for calls that find the module's pool busy (_take_spare_pool)
_call_ids = itertools.count(1)


def _worker_env(n_workers: int, inner_threads: int | None, max_nbytes: int | None) -> list:
    threads = inner_threads if inner_threads else max(1, cpu_count() // n_workers)
    # As joblib: an explicit inner_max_num_threads wins; else a limit the
    # user set in the environment is kept, and the share of the CPUs fills in
    # the others. The worker applies the result to loaded libraries too.
    env = [
        (name, str(inner_threads) if inner_threads else os.environ.get(name, str(threads)))
        for name in (
            "OMP_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "MKL_NUM_THREADS",
            "BLIS_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS",
            "NUMEXPR_NUM_THREADS",
            "NUMBA_NUM_THREADS",
        )
    ]
    if "ENABLE_IPC" not in os.environ:
        env.append(("ENABLE_IPC", "1"))  # TBB's schedulers of all workers share the CPUs
    env.append(("PERFKIT_INNER_THREADS", str(threads)))
    env.append(("PERFKIT_WORKER_CPUS", str(max(1, cpu_count() // n_workers))))
    env.append(("PERFKIT_MAX_NBYTES", str(max_nbytes if max_nbytes is not None else 1 << 62)))
    # Workers import the same perfkit as the parent: PYTHONPATH finds it; the
    # worker then puts the parent's own PYTHONPATH back (see
    # perfkit._worker.take_parent_pythonpath), so that a program a task starts
    # (another Python, say) sees the environment it would under the caller,
    # and takes the caller's sys.path with each call (_function_frame).
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent_pythonpath = os.environ.get("PYTHONPATH")
    env.append(("PYTHONPATH", here if parent_pythonpath is None else here + os.pathsep + parent_pythonpath))
    env.append(("PERFKIT_PARENT_PYTHONPATH", "" if parent_pythonpath is None else "=" + parent_pythonpath))
    return env


# Large buffers: workers copy them straight out of this process when the
# kernel lets them (process_vm_readv; probed once per pool), else they go
# through shared memory. Large results likewise: this process copies them out
# of the workers (as their ancestor it may, under Yama's scope 1 too), else
# they come in memfds. PERFKIT_REMOTE_READ=0 forces shared memory both ways
# (and leaves Yama's ptrace restriction as it is: see _remote_read_works).
_remote_read_allowed = os.environ.get("PERFKIT_REMOTE_READ", "1") != "0"
# pool -> bool; weak, so that it holds no pool alive and forgets the ones gone.
_remote_read_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# The pid that tried naming itself its ptracer, once (a forked child is
# another process, which must try anew); the lock makes one thread try.
_self_ptracer_pid = None
_self_ptracer_lock = threading.Lock()


def _new_pool(n_workers: int, inner_threads, max_nbytes):
    from perfkit._native import WorkerPool

    pool = WorkerPool(
        n_workers,
        sys.executable,
        ["-m", "perfkit._worker"],
        _worker_env(n_workers, inner_threads, max_nbytes),
        copy_results=_remote_read_allowed,
    )
    try:
        _remote_read_pools[pool] = _remote_read_allowed and _remote_read_works(pool)
    except BaseException:
        # Ctrl-C (a notebook's stop button) while the workers start: the
        # probe waits for them. Held by the traceback only (IPython keeps
        # the last one), the pool would keep them, idle, until collected.
        pool.terminate()
        raise
    return pool


def _remote_read_works(pool) -> bool:
    """Whether the pool's workers can copy buffers out of this process.

    Yama's ptrace_scope 1 (Ubuntu's default, and any container on such a
    host) lets a process be read only by its ancestors, so workers cannot
    read their parent. A process may name a ptracer whose descendants are
    exempt; naming itself exempts its own descendants: the workers, and
    whatever else it starts, which could then attach to it as gdb would.
    That is the trade for copying large arrays once instead of through
    shared memory (about twice as fast); PERFKIT_REMOTE_READ=0 declines it.
    Yama keeps one such name per process, for the process's life: this
    replaces any the program named before, and is withdrawn at once if the
    workers still cannot read (another restriction, a seccomp filter say)."""
    global _self_ptracer_pid
    if _probe_remote_read(pool):
        return True
    with _self_ptracer_lock:
        if _yama_ptrace_scope() != 1:
            return False
        if _self_ptracer_pid == os.getpid():
            # Tried already (for another pool, maybe by another thread while
            # this one waited): readable now only if that worked.
            return _probe_remote_read(pool)
        _self_ptracer_pid = os.getpid()
        try:
            _native.set_self_ptracer(True)
        except OSError:
            return False
        if _probe_remote_read(pool):
            return True
        with contextlib.suppress(OSError):
            _native.set_self_ptracer(False)
        return False


def _function_frame(functions: bytes, recording=None) -> bytes:
    """A call's FUNCTION frame (see perfkit._pool_common): the caller's
    sys.argv and sys.path as they are now, which the worker takes before it
    unpickles the functions (a module of a directory the caller put on its
    path since the pool started), and the pickled functions. Path entries go
    as the absolute paths they name here (a relative one, after a chdir);
    what is not a path (importlib skips it too) is left out. The script's
    own entry, "" (the current directory), goes as the directory it names
    now and the one the process started in, as loky and multiprocessing
    send it: a notebook's module imported before a %cd is still found.
    `recording`: the (builtins, clock) of the profiler recording here, with
    which the workers record the call's batches for it, or None (none
    records, or it was made with workers=False)."""
    import multiprocessing.process

    started_in = multiprocessing.process.ORIGINAL_DIR
    path = []
    for entry in sys.path:
        try:
            entry = os.fsdecode(entry)
        except TypeError:
            continue
        path.append(entry if os.path.isabs(entry) or "://" in entry else os.path.abspath(entry))
        if entry == "" and started_in and started_in != path[-1]:
            path.append(started_in)
    return pickle.dumps(([str(arg) for arg in sys.argv], path, functions, recording), protocol=5)


def _yama_ptrace_scope():
    """Yama's ptrace_scope (0–3), or None where there is no Yama."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _probe_remote_read(pool) -> bool:
    from perfkit._pool_common import probe_remote_read

    expected = os.urandom(32)
    probe = bytearray(expected)
    address, length = _native.buffer_address(probe)
    call = next(_call_ids)
    try:
        pool.begin_call(call, _function_frame(cloudpickle_dumps(((probe_remote_read,), []))))
        pool.submit(
            call, 0, pickle.dumps((0, 0, [(os.getpid(), address, length, expected)]), protocol=5), [], False
        )
        event = pool.next_event(30)
        if event is None or event[0] != "reply" or event[3]:
            return False
        _, results = _load_reply(event[4], event[5], event[6])
        return results == [True]
    except Exception:  # noqa: BLE001 - any doubt: use shared memory
        return False
    finally:
        del probe


def _acquire_shared_pool(key):
    """``(pool, lock)``: the module-level pool for `key`, and the lock taken
    for this call, to release when it ends (a forked child's copy of the call
    must release that one, not the child's own); or ``(None, None)`` if
    another thread is using it (the caller then makes a private pool)."""
    global _shared_pool
    lock = _pool_lock
    if not lock.acquire(blocking=False):
        return None, None
    try:
        if _shared_pool is not None and (_shared_pool[0] != key or not _shared_pool[1].alive):
            _shared_pool[1].close()
            _shared_pool = None
        if _shared_pool is None:
            _shared_pool = (key, _new_pool(*key))
        return _shared_pool[1], lock
    except BaseException:
        lock.release()
        raise


def _release_shared_pool(pool, lock, broken: bool):
    global _shared_pool
    try:
        if broken:
            pool.terminate()
            if _shared_pool is not None and _shared_pool[1] is pool:
                _shared_pool = None
    finally:
        lock.release()


def _free_kept_pool(key):
    """``(pool, lock)``: the module's pool and the lock this call took on it;
    else the spare, with no lock; else ``(None, None)``."""
    pool, lock = _acquire_shared_pool(key)
    if pool is None:
        pool = _take_spare_pool(key)
    return pool, lock


def _take_spare_pool(key):
    """The kept spare pool for `key`, or None. Calls that find the module's
    pool busy (another thread's call, or a generator left unfinished, as in
    a notebook) run on it rather than on workers started for each of them."""
    global _spare_pool
    with _spare_lock:
        spare, _spare_pool = _spare_pool, None
    if spare is not None and spare[0] == key and spare[1].alive:
        return spare[1]
    if spare is not None:
        spare[1].close()
    return None


def _keep_spare_pool(key, pool):
    """After a call on a pool of its own: kept as the spare (one at most)."""
    global _spare_pool
    with _spare_lock:
        if _spare_pool is None:
            _spare_pool = (key, pool)
            return
    pool.close()


_exiting = False  # set at the interpreter's exit, when the kept pools go


def _take_kept_pools() -> list:
    """The kept pools (the shared one and the spare), no longer kept."""
    global _shared_pool, _spare_pool
    pools = []
    if _shared_pool is not None:
        pools.append(_shared_pool[1])
        _shared_pool = None
    with _spare_lock:
        spare, _spare_pool = _spare_pool, None
    if spare is not None:
        pools.append(spare[1])
    return pools


def _shutdown_shared_pool():
    """Kills the kept pools' workers now (the next call starts afresh)."""
    for pool in _take_kept_pools():
        pool.terminate()


def _at_exit():
    """Ends the kept pools as the process ends: their idle workers exit as
    processes do (what their tasks printed is flushed, their atexit handlers
    run); a worker still busy with an abandoned call is killed."""
    global _exiting
    _exiting = True
    for pool in _take_kept_pools():
        pool.close_at_exit()


_with_private_pools: weakref.WeakSet = weakref.WeakSet()  # Parallel objects holding workers of their own


def _forget_pools_after_fork():
    """In a child forked from a process that used perfkit.Parallel, the kept
    pools (the shared one, and those of `with Parallel() as p` objects) are
    the parent's: their workers and threads are not this process's, and a
    call queued on them would wait for ever. This process starts its own.
    (A WorkerPool does nothing to its workers outside the process that
    started it: dropping or closing the parent's here leaves them alone.)"""
    global _shared_pool, _pool_lock, _executors_lock, _spare_pool, _spare_lock
    global _exiting
    _shared_pool = _spare_pool = None
    _exiting = False  # (a child forked by an exit handler exits on its own)
    for kept in list(_with_private_pools):
        kept._private_pool = None
        kept._private_pool_busy = threading.Lock()  # (the call holding it is the parent's)
    _executors.clear()  # (their threads are gone: dropping them joins nothing)
    _running_batches.clear()
    _executor_users.clear()
    # A thread of the parent may have held these at the fork.
    _pool_lock = threading.Lock()
    _executors_lock = threading.RLock()
    _spare_lock = threading.Lock()


import atexit

atexit.register(_at_exit)
os.register_at_fork(after_in_child=_forget_pools_after_fork)


# --------------------------------------------------------------------------- progress


class _Progress:
    """A progress bar on stderr (count, rate, ETA); plain lines when stderr is not a terminal."""

    def __init__(self, total, enabled: bool, callback=None, verbose: int = 0, closing=None):
        self.total = total
        self.enabled = enabled or verbose > 0
        self.callback = callback
        self.closing = closing  # called once when the call ends, however it ends
        self.done = 0
        self.start = time.perf_counter()
        self.last_draw = self.start  # first line after one interval, when the rate means something
        self.stream = sys.stderr
        self.on_screen = False
        self.drawn_done = -1  # the count the last line showed
        self.drawn_width = 0  # the characters the bar last drawn in place takes on its line
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        # A Jupyter cell's output is no terminal, but redraws a line after
        # "\r" as tqdm's bars rely on: one bar, not a line every second.
        notebook = not self.tty and type(self.stream).__module__.startswith("ipykernel")
        self.in_place = self.tty or notebook  # (the bar, redrawn after "\r")
        self.interval = 0.1 if self.tty else 0.25 if notebook else 1.0

    def update(self, n: int) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.last_draw >= self.interval:
            self.last_draw = now
            self._draw(now)

    def _draw(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(1.0, self.done / self.total)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_text = "0:00" if final else _clock(eta)
            if self.in_place:
                bar = "#" * int(frac * 30)
                line = (
                    f"\r[{bar:<30}] {self.done}/{self.total} {100 * frac:3.0f}% {_rate(rate)} ETA {eta_text} "
                )
            else:
                line = (
                    f"perfkit.Parallel: {self.done}/{self.total} tasks ({100 * frac:.0f}%), "
                    f"{_rate(rate)}, ETA {eta_text}\n"
                )
        else:
            line = f"perfkit.Parallel: {self.done} tasks"
            if not (final and self.done == 0):
                # (not for a call that had none: "0 tasks, 0.0 tasks/s" said
                # it ran slowly; tqdm's bar says "?it/s")
                line += f", {_rate(rate)}"
            line = "\r" + line + " " if self.in_place else line + "\n"
        if self.in_place:
            # Spaces over what a longer bar left (ETA 1:00:00 -> 59:59, 100.0 -> 99.9 tasks/s).
            width = len(line) - 1
            line += " " * (self.drawn_width - width)
            self.drawn_width = width
        self.stream.write(line)
        self.stream.flush()
        self.on_screen = True
        self.drawn_done = self.done

    def close(self, completed: bool) -> None:
        if self.closing is not None:
            self.closing()
        if not self.enabled:
            return
        if completed and (self.in_place or self.drawn_done != self.done):  # (a line is not printed twice)
            self._draw(time.perf_counter(), final=True)
        if self.in_place and self.on_screen:
            self.stream.write("\n")  # (ends the bar's line)
            self.stream.flush()


def _rate(rate: float) -> str:
    if rate >= 1000:
        return f"{rate / 1000:.1f}k tasks/s"
    return f"{rate:.1f} tasks/s"


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# --------------------------------------------------------------------------- Parallel


class Parallel(Generic[ReturnAs]):
    """joblib's ``Parallel``: call it on an iterable of ``delayed(f)(...)`` items.

    Extra parameters: ``progress=True`` (a progress bar on stderr) and
    ``callback=fn`` (called as ``fn(completed, total)`` after each batch; total
    is None when the iterable has no length).
    """

    def __init__(
        self,
        n_jobs: int | None = _UNSET,
        backend: str | None = _UNSET,
        # (mypy does not take a TypeVar's default for the parameter's)
        return_as: ReturnAs = "list",  # type: ignore[assignment]
        verbose: int = _UNSET,
        timeout: float | None = None,
        pre_dispatch: int | str = "2 * n_jobs",
        batch_size: int | Literal["auto"] = "auto",
        temp_folder: str | os.PathLike[str] | None = None,
        max_nbytes: int | str | None = _UNSET,
        mmap_mode: str | None = "r",
        prefer: Literal["processes", "threads"] | None = _UNSET,
        require: Literal["sharedmem"] | None = _UNSET,
        progress: bool = _UNSET,
        callback: Callable[[int, int | None], object] | None = None,
        inner_max_num_threads: int | None = _UNSET,
    ) -> None:
        if return_as not in RETURN_AS:
            raise ValueError(f"return_as={return_as!r}: use one of {', '.join(map(repr, RETURN_AS))}")
        if backend not in (_UNSET, None) and (not isinstance(backend, str) or backend not in BACKEND_ALIASES):
            raise ValueError(f"unknown backend {backend!r}; use one of {sorted(BACKEND_ALIASES)}")
        if n_jobs is not _UNSET:
            n_jobs = _as_n_jobs(n_jobs)
        # numbers.Integral and Real, as joblib: numpy's integers and floats count.
        if batch_size != "auto":
            if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
                raise ValueError(f"batch_size={batch_size!r}: use 'auto' or a positive int")
            batch_size = int(batch_size)
        if timeout is not None:
            if not (isinstance(timeout, numbers.Real) and timeout > 0):
                raise ValueError(f"timeout={timeout!r}: use a positive number of seconds or None")
            # A float (threads wait with it; a numpy float is not one); no limit
            # for inf, or for more than threads can wait for.
            timeout = None if timeout > threading.TIMEOUT_MAX else float(timeout)
        _dispatch_window(pre_dispatch, 2)  # a bad one fails here, whichever backend runs
        if max_nbytes not in (_UNSET, None):
            _parse_nbytes(max_nbytes)
        _check_prefer_require(None if prefer is _UNSET else prefer, None if require is _UNSET else require)
        self._args = {
            "n_jobs": n_jobs,
            "backend": backend,
            "verbose": verbose,
            "max_nbytes": max_nbytes,
            "prefer": prefer,
            "require": require,
            "progress": progress,
            "inner_max_num_threads": inner_max_num_threads,
        }
        # The parallel_config in force now, as joblib reads it: when the
        # Parallel is made, not when it is called.
        self._config = _config.get()
        self.return_as = return_as
        # joblib's attributes that subclasses (progress recipes) read.
        self.return_generator = return_as != "list"
        self.return_ordered = return_as != "generator_unordered"
        self.timeout = timeout
        self.pre_dispatch = pre_dispatch
        self.batch_size = batch_size
        self.callback = callback
        self._private_pool = None
        # Held by the call on the kept pool of `with Parallel() as p`: the pool
        # runs one call at a time (a second would take the first's replies).
        self._private_pool_busy = threading.Lock()
        self._in_context = False
        # joblib's counters, for a print_progress of the caller's (see there).
        self.n_dispatched_tasks = self.n_completed_tasks = 0

    # -- configuration -------------------------------------------------------------

    def _setting(self, name, default=None):
        value = self._args.get(name, _UNSET)
        if value is not _UNSET and value is not None:
            return value
        return self._config.get(name, default)

    @property
    def n_jobs(self) -> int:
        """How many tasks a call runs at once (joblib keeps the number given: -1, say)."""
        backend, n_jobs = self._resolve()
        if backend == "dask":
            # A dask call runs on every thread of the cluster, whatever n_jobs says.
            try:
                return _dask_threads(_dask_client(self._config))
            except (ImportError, RuntimeError, ValueError):
                return n_jobs  # (no cluster yet: the call itself says what is missing)
        return n_jobs

    @property
    def verbose(self) -> int:
        """The verbosity: from 1, a line per call on stderr (tasks, rate)."""
        return int(self._setting("verbose", 0) or 0)

    @verbose.setter
    def verbose(self, value: int) -> None:
        self._args["verbose"] = value  # (as joblib's plain attribute may be set)

    def _effective_n_jobs(self) -> int:
        """joblib's name, which subclasses call: how many tasks run at once."""
        return self.n_jobs

    def _resolve(self):
        """(backend, n_jobs) with joblib's precedence: explicit argument, then
        parallel_config, then prefer/require hints, then defaults."""
        cfg = self._config
        explicit = self._args["backend"]
        backend = explicit if explicit not in (_UNSET, None) else cfg.get("backend")
        require = self._setting("require")
        prefer = self._setting("prefer")
        _check_prefer_require(prefer, require)  # (each may come from another place)
        if backend is not None:
            backend = BACKEND_ALIASES[backend]
            if require == "sharedmem" and backend in ("processes", "dask"):
                if explicit in (_UNSET, None):
                    backend = "threads"
                elif self._args["require"] not in (_UNSET, None):
                    raise ValueError(f"backend {explicit!r} does not share memory, but require='sharedmem'")
                # (else a parallel_config's require, which a backend the call names overrides, as in joblib)
        elif require == "sharedmem" or prefer == "threads":
            backend = "threads"
        else:
            backend = "processes"
        n_jobs = self._args["n_jobs"]
        if n_jobs in (_UNSET, None):
            n_jobs = _as_n_jobs(cfg.get("n_jobs"))
        if n_jobs is None:
            n_jobs = -1 if backend == "dask" else 1
        if backend == "dask":
            return backend, n_jobs
        cpus = cpu_count()
        if n_jobs < 0:
            n_jobs = max(1, cpus + 1 + n_jobs)
        # Nested calls: inside a worker (or a threads-backend task) stay within
        # its share of the CPUs; except threads asked for by count (threads for
        # I/O, say, as joblib gives them): Python code in them shares one GIL.
        share = _nested_share()
        if share is not None:
            asked = self._args["n_jobs"]
            if not (backend == "threads" and asked not in (_UNSET, None) and int(asked) > 0):
                n_jobs = min(n_jobs, share)
            if backend == "processes":
                backend = "threads"
        if n_jobs == 1 or backend == "sequential" or (backend == "processes" and _multiprocessing_disabled()):
            return "sequential", 1
        return backend, n_jobs

    # -- context manager: keep the workers ---------------------------------------------

    def __enter__(self) -> Self:
        self._in_context = True
        _with_private_pools.add(self)  # (before any call: a fork during one finds it)
        return self

    def __exit__(self, *exc: object) -> None:
        self._in_context = False
        self._close_private_pool()

    def _close_private_pool(self):
        """Closes the kept workers, unless a call (a generator made inside the
        `with` block) still runs on them: that call closes them when it ends."""
        if self._private_pool_busy.acquire(blocking=False):
            try:
                if self._private_pool is not None:
                    self._private_pool[1].close()
                    self._private_pool = None
            finally:
                self._private_pool_busy.release()

    def __del__(self):
        p = getattr(self, "_private_pool", None)
        if p is not None:
            try:
                p[1].terminate()
            except Exception:  # noqa: BLE001, S110
                pass

    def __repr__(self) -> str:
        try:
            backend, n = self._resolve()
        except Exception:  # noqa: BLE001
            backend, n = "?", "?"
        return f"Parallel(n_jobs={n}, backend={backend!r}, return_as={self.return_as!r})"

    # -- the call --------------------------------------------------------------------

    def print_progress(self) -> None:
        """Called after each finished batch, as joblib calls it: override it
        (reading ``n_completed_tasks`` and ``n_dispatched_tasks``) to show
        progress your own way, as joblib's tqdm recipes do."""

    @overload
    def __call__(self: Parallel[Literal["list"]], iterable: Iterable[_Task[R]]) -> list[R]: ...
    @overload
    def __call__(
        self: Parallel[Literal["generator"]] | Parallel[Literal["generator_unordered"]],
        iterable: Iterable[_Task[R]],
    ) -> Generator[R, None, None]: ...
    @overload
    def __call__(self, iterable: Iterable[_Task[R]]) -> list[R] | Generator[R, None, None]: ...
    def __call__(self, iterable):  # type: ignore[no-untyped-def]
        backend, n_jobs = self._resolve()
        total = _length(iterable)
        if backend != "sequential":
            # Not iterable: a TypeError at the call, as joblib's (its
            # sequential calls, and so perfkit's, raise it when drawn).
            iterable = iter(iterable)
        self.n_dispatched_tasks = self.n_completed_tasks = 0
        callback = self.callback
        closing = None
        if type(self).print_progress is not Parallel.print_progress:
            user_callback = callback
            closing = self.print_progress  # once more at the end, failed or not, as joblib does

            def callback(done, total):
                self.n_completed_tasks = done
                if user_callback is not None:
                    user_callback(done, total)
                self.print_progress()

        progress = _Progress(
            total,
            bool(self._setting("progress", False)),
            callback,
            int(self._setting("verbose", 0) or 0),
            closing,
        )
        if backend == "sequential":
            gen = _run_sequential(iterable, progress, self)
        elif backend == "threads":
            # The share of each of its tasks, from the calling thread's own (a
            # returned generator may be drawn from another thread).
            gen = self._run_threads(iterable, n_jobs, _share_of_one_of(n_jobs), total, progress)
        elif backend == "dask":
            gen = self._run_dask(iterable, n_jobs, total, progress)
        else:
            gen = self._run_processes(iterable, n_jobs, total, progress)
        gen = _forgetting(gen)
        if self.return_as == "list":
            out = []
            for batch in gen:
                out.extend(batch)
            return out
        # As joblib does, the first batches go out now, also for a generator the
        # caller draws later: each backend yields one empty batch (_STARTED)
        # once they are out, before any result.
        try:
            next(gen, None)
        except Exception as exc:  # noqa: BLE001 (raised again, at the first next())
            # An error drawing or sending the first tasks comes at the first
            # next(), as joblib's does: a caller's try around its loop sees it.
            failed = _raising(exc)
            next(failed)
            return failed
        results = _results(gen)
        next(results)
        return results

    # -- processes -------------------------------------------------------------------

    def _pool_key(self, n_jobs):
        return (
            n_jobs,
            self._setting("inner_max_num_threads"),
            _parse_nbytes(self._setting("max_nbytes", "64K")),
        )

    def _run_processes(self, iterable, n_jobs, total, progress):
        key = self._pool_key(n_jobs)
        private = self._in_context
        busy = self._private_pool_busy  # (a forked child gets a fresh one: this call's is this one)
        # Refused at the call, as joblib refuses it, not when a generator is drawn.
        if private and not busy.acquire(blocking=False):
            raise RuntimeError(
                "This Parallel instance is already running ! Its workers run one call at a time: "
                "finish the previous call (consume its generator, or delete it) before making another, "
                "or make it from another Parallel object."
            )
        return self._process_batches(iterable, n_jobs, total, progress, key, private, busy)

    def _process_batches(self, iterable, n_jobs, total, progress, key, private, busy):
        """The call's result batches (`busy` held if `private`: the caller
        starts this generator at once, which releases it in the end)."""
        announce = True
        if private:
            try:
                if (
                    self._private_pool is None
                    or self._private_pool[0] != key
                    or not self._private_pool[1].alive
                ):
                    if self._private_pool is not None:
                        self._private_pool[1].close()
                    self._private_pool = (key, _new_pool(*key))
            except BaseException:
                busy.release()
                raise
            pool, shared = self._private_pool[1], False
        else:
            pool, shared_lock = _free_kept_pool(key)
            if pool is None:
                # Every kept pool is busy (behind other threads' calls, or
                # generators not yet drawn): workers of this call's own start
                # when the caller draws from it, not at the call. So a few
                # generators made at once and drawn one after another do not
                # start a pool each, and hold no workers until they run. Its
                # first tasks are drawn now all the same, as joblib draws
                # pre_dispatch tasks at the call (what they read, a loop
                # variable of the caller's say, is what it is at the call).
                announce = False
                tasks = iter(iterable)
                first = list(itertools.islice(tasks, _dispatch_window(self.pre_dispatch, n_jobs)))
                iterable = itertools.chain(first, tasks)
                del first
                owner = os.getpid()
                try:
                    yield _STARTED
                except GeneratorExit:
                    progress.close(False)  # (a print_progress of the caller's is called however it ends)
                    raise
                _check_caller(owner)
                pool, shared_lock = _free_kept_pool(key)
                if pool is None:
                    pool = _new_pool(*key)
            shared = shared_lock is not None
        broken = False
        call = None
        try:
            call = _ProcessCall(self, pool, iterable, n_jobs, total, progress, key[2]).run(announce)
            if self.return_as == "list":
                with fewer_young_collections():
                    yield from call
            else:
                while True:
                    # The GC setting only while the call runs, not while a
                    # returned generator waits for its caller between results.
                    with fewer_young_collections():
                        batch = next(call, _NO_TASK)
                    if batch is _NO_TASK:
                        break
                    yield batch
        except BaseException as exc:
            # Ctrl-C or an abandoned call: nothing of it may keep running.
            broken = isinstance(exc, (KeyboardInterrupt, SystemExit)) or not pool.alive
            if call is not None:
                call.close()  # (its own clean-up first: what it left running is stopped)
            if broken and not shared:
                pool.terminate()
            if (
                _exiting
                and threading.current_thread().daemon
                and isinstance(exc, Exception)
                and not pool.alive
            ):
                # A daemon thread's call, whose workers went with the exiting
                # interpreter: the thread ends quietly, as daemon threads do.
                raise SystemExit from None
            raise
        finally:
            if shared:
                _release_shared_pool(pool, shared_lock, broken)
            elif private:
                busy.release()
                if not self._in_context:
                    # Its `with` block ended while this call (a generator) ran:
                    # the workers go now that it is over.
                    self._close_private_pool()
            elif pool.alive:  # (not if terminated above)
                _keep_spare_pool(key, pool)

    # -- threads ---------------------------------------------------------------------

    def _run_threads(self, iterable, n_jobs, share, total, progress):
        """Batches of tasks on a kept thread pool: one hand-off per batch, not
        per task; the tasks' own nested calls within `share` CPUs each."""
        ordered = self.return_as != "generator_unordered"
        auto = self.batch_size == "auto"
        # Auto: one task per batch until a batch of this call has been timed
        # (threads are for I/O most of all: a batch of slow tasks would run
        # them one after another), then batches of about THREAD_BATCH_SECONDS
        # each. A function timed in an earlier call starts from that cost, in
        # batches of at most UNTIMED_BATCH_TASKS: it may cost far more on
        # this call's input, and a wrong guess then runs only a few tasks
        # one after another.
        size = 1 if auto else self.batch_size
        per_task = None
        costs = _RecentCosts()
        window = _dispatch_window(self.pre_dispatch, n_jobs)
        tasks = iter(iterable)
        dispatched = 0
        pending = {}  # future -> (first index, function), in dispatch order
        order = collections.deque()  # the futures in input order (ordered results)
        # The batches' futures as they end (their done-callbacks put them
        # here): waited on without a scan of what is pending.
        completions = queue.SimpleQueue()
        started = {}  # first index -> when a thread began the batch (for a timeout per batch)
        exhausted = False
        completed = False
        started_call = False
        owner = os.getpid()
        executor, own_pool = _thread_executor(n_jobs)
        try:
            while True:
                while not exhausted and len(pending) < window:
                    head = next(tasks, _NO_TASK)
                    if head is _NO_TASK:
                        exhausted = True
                        break
                    # Tasks of one function are drawn and kept as their arguments
                    # (the caller's task tuples freed at once).
                    function = _unpack(head, dispatched)[0]
                    if auto:
                        known = (
                            per_task if per_task is not None else _thread_cost_memory.get(_cost_key(function))
                        )
                        if known is not None:
                            left = total - dispatched if total is not None else _tasks_left(iterable)
                            size = _thread_batch_size(known, left, n_jobs)
                            if per_task is None:
                                size = _untimed_batch_size(size, left, n_jobs, self.timeout)
                    if getattr(_nested, "executor", None) is None:
                        chunk, mode, items = _native.draw_uniform_batch(tasks, size, function, head, False)
                    else:
                        # A call inside a threads-backend task, on a daemon thread:
                        # drawn in Python, for the reason _run_uniform gives (the
                        # caller's generator runs Python code as it is drawn).
                        chunk, mode = [head, *itertools.islice(tasks, size - 1)], None
                    uniform = function
                    if mode is None:  # tasks as drawn (mixed functions, keywords)
                        uniform, items = None, chunk
                    future = executor.submit(
                        _run_batch_in_thread, uniform, mode, items, dispatched, share, started
                    )
                    # Its cost is kept under its first task's function, mixed or not.
                    pending[future] = (dispatched, function, len(items))
                    if ordered:
                        order.append(future)
                    future.add_done_callback(completions.put)
                    dispatched += len(items)
                    self.n_dispatched_tasks = dispatched
                if not started_call:
                    started_call = True
                    yield _STARTED
                    _check_caller(owner)  # (a generator drawn in a forked child: its threads are not there)
                if not pending:
                    break
                if ordered:
                    # In input order, but the first error raised at once (fail
                    # fast, as joblib does), not after the batches before it.
                    while not order[0].done():
                        _raise_if_failed(self._next_completion(completions, pending, started))
                    fut = order.popleft()
                    while not completions.empty():  # (ended meanwhile; `order` holds them)
                        _raise_if_failed(completions.get_nowait())
                else:
                    fut = self._next_completion(completions, pending, started)
                first, function, _ = pending.pop(fut)
                started.pop(first, None)
                results, elapsed = fut.result()
                del fut
                if auto and results:
                    cost = elapsed / len(results)
                    key = _cost_key(function)
                    known = _thread_cost_memory.get(key)
                    if known is not None and _confirms(known, elapsed, len(results)):
                        cost = known
                    per_task = costs.add(cost)
                    _thread_cost_memory[key] = per_task
                progress.update(len(results))
                yield results
                _check_caller(owner)
            completed = True
        finally:
            for fut in pending:
                fut.cancel()
            if own_pool:
                executor.shutdown(wait=False)  # (a batch still running ends in its thread)
            else:
                _release_thread_executor(executor)
            progress.close(completed)

    def _next_completion(self, completions, pending, started):
        """The next thing `completions` holds, waiting for it. With a timeout:
        a timeout error once a batch has been running for that long, though
        others go on finishing (or once none has started or finished within it)."""
        if self.timeout is None:
            return completions.get()
        while True:
            now = time.monotonic()
            running = [
                (now - started[first], first, count)
                for fut, (first, _, count) in pending.items()
                if first in started and not fut.done()
            ]
            overdue = [(first, count) for age, first, count in running if age >= self.timeout]
            if overdue:
                self._thread_timeout(overdue)
            try:
                return completions.get(timeout=self.timeout - max((r[0] for r in running), default=0.0))
            except queue.Empty:
                if not running and not any(first in started for first, _, _ in pending.values()):
                    # (ages are taken anew: one may have started meanwhile)
                    self._thread_timeout([(first, count) for first, _, count in pending.values()])

    def _thread_timeout(self, overdue):
        what = ", ".join(_tasks_text(first, count) for first, count in sorted(overdue))
        raise ParallelTimeoutError(
            f"perfkit.Parallel: {what} did not finish within timeout={self.timeout} s "
            "(threads cannot be stopped: they go on running in the background)"
        )

    # -- dask ------------------------------------------------------------------------

    def _run_dask(self, iterable, n_jobs, total, progress):
        from perfkit._dask import DaskCall

        return DaskCall(self, _dask_client(self._config), iterable, total, progress).run()


def _dask_client(config=None):
    """The Client given to parallel_config(backend="dask", client=...) (in
    ``config``, else the active one), else the current one."""
    client = (config if config is not None else _config.get()).get("backend_params", {}).get("client")
    if client is not None:
        if client.status in ("closing", "closed"):
            # (dask's own calls on it fail with "'NoneType' object has no attribute 'ncores'")
            raise ValueError(
                f"backend='dask': the dask Client given to parallel_config(client=...) is {client.status}"
            )
        return client
    try:
        from distributed import get_client
    except ImportError:
        raise ImportError("backend='dask' needs dask.distributed: pip install 'dask[distributed]'") from None
    try:
        return get_client()
    except ValueError:
        raise ValueError(  # (joblib's type here: code that falls back to local work catches it)
            "backend='dask' needs a running dask.distributed Client: create one first, "
            "e.g. `from dask.distributed import Client; client = Client()`"
        ) from None


class _InOrder:
    """Hands finished batches back in input order; a batch is keyed by the
    index of its first task."""

    def __init__(self) -> None:
        self.pending: dict = {}
        self.next = 0

    def add(self, first, results):
        self.pending[first] = results
        while self.next in self.pending:
            out = self.pending.pop(self.next)
            self.next += len(out)
            yield out


def _check_caller(owner):
    """A call's generator drawn in a child forked from the process that made
    it: its workers or threads are the parent's, so it stops, as a call on
    the parent's pools does."""
    if os.getpid() != owner:
        raise RuntimeError(
            f"perfkit.Parallel: this call belongs to process {owner} (this is a child forked from it); "
            "make the call again in this process"
        )


# The empty batch each backend's generator yields first, once the call's first
# batches are out (Parallel.__call__ draws it).
_STARTED = ()


def _forgetting(batches):
    """The batches of a call; at its end, `delayed` lets go of the wrapper it keeps for reuse."""
    try:
        yield from batches
    finally:
        _native.delayed_forget()


def _results(batches):
    """A started call's results, one by one. Started itself (by its maker):
    close() before the first next() then ends the call on every Python, as
    3.12 runs no clean-up for a generator that never started."""
    try:
        yield
        for batch in batches:
            yield from batch
    finally:
        batches.close()


def _raising(exc):
    yield
    raise exc


def _length(iterable):
    """How many tasks `iterable` holds, or None if that is not known without
    drawing them. A generator expression over a sized collection, joblib's
    usual input (``delayed(f)(x) for x in xs``), holds one per item left,
    unless it filters or nests loops."""
    try:
        return len(iterable)
    except TypeError:
        pass
    if _one_task_per_item(getattr(iterable, "gi_code", None)):
        return _tasks_left(iterable)
    return None


@functools.lru_cache(maxsize=256)
def _one_task_per_item(code):
    """Whether a generator expression's code yields once per item of its
    iterable: one loop, and no conditional jump (an ``if`` clause; a
    conditional inside the task expression is refused too, to be safe)."""
    if code is None or code.co_name != "<genexpr>":
        return False
    import dis  # (only for generator expressions, and once per one)

    loops = yields = 0
    for instruction in dis.get_instructions(code):
        if instruction.opname == "FOR_ITER":
            loops += 1
        elif instruction.opname == "YIELD_VALUE":
            yields += 1  # (none: a filter the compiler knew to be false, ``if 0``)
        elif "_IF_" in instruction.opname:
            return False  # (POP_JUMP_IF_FALSE, POP_JUMP_FORWARD_IF_TRUE, JUMP_IF_FALSE_OR_POP, …)
    return loops == 1 and yields == 1


# Iterators whose length hint is exact and free to ask for.
_SIZED_ITERATORS = tuple(
    type(iter(x)) for x in ([], (), range(0), {}, {}.values(), {}.items(), set(), "", b"", bytearray())
)


def _tasks_left(iterable):
    """How many tasks a generator expression over a sized collection has not
    yielded yet (``delayed(f)(x) for x in xs``: its outermost iterable, taken
    when the expression was made, is the frame's local ``.0``), or None. An
    upper bound if the expression filters; used only to size batches."""
    frame = getattr(iterable, "gi_frame", None)
    if frame is None or getattr(iterable, "gi_running", True):
        return None
    try:
        source = frame.f_locals.get(".0")
    except Exception:  # noqa: BLE001
        return None
    return source.__length_hint__() if type(source) in _SIZED_ITERATORS else None


@contextlib.contextmanager
def _within_cpus(share):
    """Inside: a nested Parallel (a task's own) stays within `share` CPUs.
    The share this thread had before is restored after (it may itself run
    inside a task)."""
    outer = getattr(_nested, "share", None)
    _nested.share = share
    try:
        yield
    finally:
        _nested.share = outer


def _share_of_one_of(parts):
    """The CPUs of one of ``parts`` tasks running at once, from what the
    caller has: its own share when it is itself a task (so that each level
    of nesting divides what its parent got, not the whole machine), else
    this machine's CPUs."""
    return max(1, (_nested_share() or cpu_count()) // max(1, parts))


def _nested_share():
    if getattr(_nested, "share", None) is not None:
        return _nested.share
    env = os.environ.get("PERFKIT_WORKER_CPUS")
    return int(env) if env else None


def _unpack(task, index):
    try:
        function, args, kwargs = task
    except (TypeError, ValueError):
        raise TypeError(
            f"Parallel expects items made by delayed(f)(...); item {index} is {type(task).__name__}"
        ) from None
    # Tasks built by hand may hold a list of arguments or any mapping of
    # keywords, as joblib takes them (it calls f(*args, **kwargs)).
    if type(args) is not tuple:
        args = tuple(args)
    if type(kwargs) is not dict:
        kwargs = dict(kwargs)
    return function, args, kwargs


def _run_sequential(iterable, progress, parallel):
    yield _STARTED  # (joblib's sequential calls, too, run each task only when its result is drawn)
    completed = False
    try:
        for i, task in enumerate(iterable):
            function, args, kwargs = _unpack(task, i)
            parallel.n_dispatched_tasks = i + 1
            result = function(*args, **kwargs)
            # Counted before it is handed over, as the other backends count a
            # batch (and joblib's sequential calls call print_progress): a
            # callback that raises stops the call before the result it counts.
            progress.update(1)
            yield [result]
            del result
        completed = True
    finally:
        progress.close(completed)


# -- threads helpers


_executors: dict = {}  # (n_jobs, depth) -> kept thread pool, least recently used first
# Idle thread pools kept per depth, besides those calls are using.
KEPT_IDLE_THREAD_POOLS = 2
# Reentrant: a call's generator dropped in a reference cycle may be finalized
# by a collection that starts inside the lock (an allocation in
# _thread_executor), and its `finally` releases its pool under the lock.
_executors_lock = threading.RLock()


def _thread_executor(n_jobs):
    """``(thread pool, whether it is this call's own)``: the kept pool of
    `n_jobs` threads for a call made at this thread's depth (a threads-backend
    call inside a task of another, whose share of the machine may be that same
    n_jobs, gets a pool of its own depth, not the one whose threads all wait
    for it); or a pool for this call alone when every thread of the kept one
    is running a batch (a task may make this call from a thread it started,
    and wait for it)."""
    depth = getattr(_nested, "executor_depth", -1) + 1
    with _executors_lock:
        ex = _executors.pop((n_jobs, depth), None)
        if ex is None:
            # Kept: the pools of this depth that calls are using, and the
            # most recently used idle one besides this (calls alternating two
            # sizes keep both). The others go: calls of n_jobs=len(urls) used
            # to keep a pool, and its threads, for every length.
            idle = [
                key
                for key, pool in _executors.items()
                if key[1] == depth and not _executor_users[pool] and not _running_batches[pool]
            ]
            for key in idle[: max(0, len(idle) - KEPT_IDLE_THREAD_POOLS + 1)]:  # (oldest first)
                _executors.pop(key).shutdown(wait=False)
            ex = _new_thread_pool(n_jobs, depth)
        _executors[(n_jobs, depth)] = ex  # (last: the most recently used)
        if _running_batches[ex] < n_jobs:
            _executor_users[ex] += 1
            return ex, False
    return _new_thread_pool(n_jobs, depth), True


def _release_thread_executor(pool) -> None:
    """A call is done with the kept `pool` `_thread_executor` gave it."""
    with _executors_lock:
        _executor_users[pool] -= 1
        if _executor_users[pool] <= 0:
            del _executor_users[pool]


def _new_thread_pool(n_jobs, depth):
    made = []
    pool = _DaemonThreadPool(
        n_jobs,
        f"perfkit-thread-{depth}" if depth else "perfkit-thread",
        _mark_pool_thread,
        (depth, made),
    )
    made.append(pool)  # (its threads start at its first batch, after this)
    return pool


class _DaemonThreadPool:
    """ThreadPoolExecutor's ``submit`` and ``shutdown``, on daemon threads:
    a batch still running when its call was given up (a timeout, Ctrl-C)
    does not hold the interpreter's exit until it ends, or for ever, as
    concurrent.futures' threads would (they are joined at exit). joblib's
    threading backend (multiprocessing.pool.ThreadPool) does not either."""

    def __init__(self, n_threads, name, initializer, initargs):
        self._n_threads = n_threads
        self._name = name
        self._initializer = initializer
        self._initargs = initargs
        self._queue = queue.SimpleQueue()
        self._threads = []
        self._lock = threading.Lock()

    def submit(self, fn, *args):
        future = Future()
        self._queue.put((future, fn, args))
        if len(self._threads) < self._n_threads:
            with self._lock:
                if len(self._threads) < self._n_threads:
                    thread = threading.Thread(
                        target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                    )
                    thread.start()
                    self._threads.append(thread)
        return future

    def _work(self):
        self._initializer(*self._initargs)
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:  # noqa: BLE001 (the caller gets it, as from concurrent.futures)
                    future.set_exception(exc)
                    del exc
                else:
                    future.set_result(result)
                    del result
            del future, fn, args

    def shutdown(self, wait=True):
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()


def _mark_pool_thread(depth, made):
    _nested.executor_depth = depth
    _nested.executor = made[0]


# thread pool -> how many of its threads are running a batch now (under _executors_lock).
_running_batches: collections.Counter = collections.Counter()
# kept thread pool -> how many calls are using it now (under _executors_lock).
_executor_users: collections.Counter = collections.Counter()


# Aim for batches of threads-backend tasks this long (wall time: threads wait on I/O).
THREAD_BATCH_SECONDS = 0.005


# function's _cost_key -> its last per-task wall time on the threads backend.
_thread_cost_memory: dict = {}


PROBE_SLACK_SECONDS = 200e-6


def _confirms(remembered_per_task, elapsed, count):
    """Whether a small batch's time agrees with an earlier call's cost per
    task: within twice that, plus PROBE_SLACK_SECONDS of the batch's own
    overhead (which a batch of a few tiny tasks is mostly made of, and which
    measured per task would shrink the next batches for nothing); and, where
    the earlier cost is more than that overhead, at least half of it (tasks
    far cheaper on this call's input must not run one a batch for the
    slow call's sake)."""
    expected = remembered_per_task * count
    return (
        count <= _ProcessCall.UNTIMED_BATCH_TASKS
        and elapsed <= 2 * expected + PROBE_SLACK_SECONDS
        and (elapsed >= expected / 2 or expected <= PROBE_SLACK_SECONDS)
    )


def _untimed_batch_size(size, left, n_jobs, timeout):
    """A batch size from an earlier call's cost, for a call none of whose
    batches has been timed yet: at most UNTIMED_BATCH_TASKS, and a share of
    what is left that gives every worker or thread a batch (the tail's
    one-millisecond floor would trust the old cost). Where what is left is
    not known (a generator), one task: the first batch might be all of them,
    run on one worker, if this call's tasks cost far more than the last
    call's; a confirming first timing brings the remembered size at once.
    With a timeout, one task too: the timeout is per batch, and tasks that
    cost far more than the last call's, grouped, would overrun it together
    where each alone would not."""
    if left is None or timeout is not None:
        return 1
    size = min(size, _ProcessCall.UNTIMED_BATCH_TASKS, math.ceil(left / (2 * n_jobs)))
    return max(1, size)


def _thread_batch_size(per_task, left, n_jobs):
    """Tasks per threads-backend batch: about THREAD_BATCH_SECONDS of them
    (see _share_batch_size)."""
    return _share_batch_size(
        per_task, left, n_jobs, THREAD_BATCH_SECONDS, _ProcessCall.MIN_TAIL_BATCH_SECONDS, 8192
    )


def _share_batch_size(per_task, left, n_jobs, target_seconds, tail_seconds, most):
    """Tasks per batch: about `target_seconds` of them, and, when it is known
    what is left, at most a share of it that keeps every one of n_jobs busy
    to the end (two batches each), but not under `tail_seconds` of tasks
    (shorter batches cost more hand-offs than the imbalance they save)."""
    size = int(target_seconds / max(per_task, 1e-8))
    if left is not None:
        shortest = math.ceil(tail_seconds / max(per_task, 1e-8))
        size = min(size, max(math.ceil(left / (2 * n_jobs)), shortest))
    return max(1, min(size, most))


def _run_batch_in_thread(function, mode, items, first, share, started):
    """Runs a batch drawn by `draw_uniform_batch` (mode None: `items` are the
    tasks as drawn), its tasks' nested calls within `share` CPUs: ``(results,
    seconds it took)``. Notes when it began in `started`."""
    started[first] = time.monotonic()
    pool = _nested.executor
    with _executors_lock:
        _running_batches[pool] += 1
    try:
        return _run_batch_counted(function, mode, items, first, share)
    finally:
        with _executors_lock:
            _running_batches[pool] -= 1
            if not _running_batches[pool]:
                del _running_batches[pool]  # (a pool of one call must not be kept alive here)


def _run_batch_counted(function, mode, items, first, share):
    with _within_cpus(share):
        started = time.perf_counter()
        if mode is None:
            return _run_chunk(enumerate(items, first)), time.perf_counter() - started
        return _run_uniform(function, mode, items, first), time.perf_counter() - started


def _raise_if_failed(future):
    if not future.cancelled() and future.exception() is not None:
        future.result()


def _run_uniform(function, mode, items, first):
    """The results of tasks of one function (`items`: their arguments, as
    `draw_uniform_batch` gives them), run by a Python loop rather than
    ``_native.run_tasks``: a batch that a call gave up on may still be
    running in its daemon thread when the interpreter exits, and CPython
    ends such a thread with an unwind that must not cross Rust frames
    (PyO3 would abort the process)."""
    out = []
    append = out.append
    try:
        if mode == SINGLE:
            for item in items:
                append(function(item))
        else:
            for args in items:
                append(function(*args))
    except BaseException as exc:
        index = first + len(out)
        item = items[len(out)]
        args = (item,) if mode == SINGLE else item
        _add_note(exc, f"perfkit.Parallel: raised by task {index} ({task_label(function, args)})")
        raise
    return out


def _run_chunk(chunk):
    out = []
    append = out.append
    for index, task in chunk:
        try:
            function, args, kwargs = task
            append(function(*args, **kwargs))
        except BaseException as exc:
            function, args, kwargs = _unpack(task, index)
            _add_note(exc, f"perfkit.Parallel: raised by task {index} ({task_label(function, args, kwargs)})")
            raise
    return out


def _check_picklable(index, task, payload, dumps_with, what, to, advice=""):
    """Raises UnpicklableError naming task `index` (a ``(function, args,
    kwargs)``) when `dumps_with` cannot pickle `payload`, the part of it that
    must travel: "{what} task … could not be pickled to send {to}: …"."""
    try:
        dumps_with(payload)
    except Exception as inner:
        raise UnpicklableError(
            f"perfkit.Parallel: {what + ' ' if what else ''}task {index} ({task_label(*task)}) "
            f"could not be pickled to send {to}: {inner}.{advice}"
        ) from inner


def _tasks_text(first, count):
    """'task 3', or 'tasks 3–9' for a batch of 7 from task 3."""
    return f"task {first}" if count == 1 else f"tasks {first}–{first + count - 1}"


def _add_note(exc, note):
    if hasattr(exc, "add_note"):
        try:
            # An exception object raised again (a task re-raising one it
            # keeps) gets the note once, not once per failed call.
            if note not in getattr(exc, "__notes__", ()):
                exc.add_note(note)
        except Exception:  # noqa: BLE001, S110
            pass


# --------------------------------------------------------------------------- one process call


def _dispatch_window(pre, n_jobs):
    """How many batches may be in flight: joblib's ``pre_dispatch`` (an int,
    ``"all"`` or an expression of ``n_jobs``)."""
    if pre == "all":
        return 1 << 30
    if isinstance(pre, int):
        return max(1, pre)
    return _window_expression(str(pre), n_jobs)


@functools.lru_cache(maxsize=64)
def _window_expression(text, n_jobs):
    # Compiled once per value, not on every call (about 7 µs each time).
    try:
        return max(n_jobs, int(eval(text, {"__builtins__": {}}, {"n_jobs": n_jobs})))
    except Exception:  # noqa: BLE001
        raise ValueError(f"pre_dispatch={text!r}: use an int, 'all' or an expression of n_jobs") from None


class _ProcessCall:
    """One call on the process pool: batching, dispatch, ordering, errors."""

    # Aim for batches this long (measured compute), so per-batch overhead stays small.
    TARGET_BATCH_SECONDS = 0.02
    # ... and this long of this process's time to produce (see _auto_size).
    PARENT_BATCH_SECONDS = 0.002
    # Batches shrink towards a call's end, to no less than this.
    MIN_TAIL_BATCH_SECONDS = 0.001
    # At most this many tasks a batch until a batch of the call has been
    # timed, when an earlier call's costs are known (else one task): a
    # wrong guess then costs a few tasks run one after another, and 8 MB
    # array tasks still go in full streamed batches from the start.
    UNTIMED_BATCH_TASKS = 8
    # Keep a batch's bytes under this (memory, tail balance): a worker copies a
    # batch's buffers in, then runs its tasks; a batch that fits in the CPU's
    # last-level cache is still there when its tasks read it (100 arrays of
    # 8 MB, one per batch instead of three: ~20 % less worker CPU and wall time).
    MAX_BATCH_BYTES = 8 << 20
    # A STREAMED batch copies one task's buffers at a time, so it may hold
    # more (fewer batches: less of this process's time per task): up to
    # STREAMED_BYTES_IN_FLIGHT over the dispatch window's batches (what the
    # caller keeps alive for them), but never less than MAX_BATCH_BYTES each.
    MAX_STREAMED_BATCH_BYTES = 64 << 20
    STREAMED_BYTES_IN_FLIGHT = 256 << 20

    def __init__(self, parallel, pool, iterable, n_jobs, total, progress, max_nbytes):
        self.parallel = parallel
        self.pool = pool
        self.iterable = iterable
        self.n_jobs = n_jobs
        self.total = total
        self.progress = progress
        self.threshold = max_nbytes if max_nbytes is not None else 1 << 62
        self.ordered = parallel.return_as != "generator_unordered"
        self.window = _dispatch_window(parallel.pre_dispatch, n_jobs)
        # Function table: pool call ids share one user call; each new function starts a new id.
        self.functions = []
        self.function_index = {}
        self.call_ids = set()
        self.pool_call = None
        self.function_dirty = True
        self.recorded = False  # whether workers record batches of this call for a profiler here
        # What the last FUNCTION frame told the workers to record with (see _begin).
        self.recording_sent = None
        self.remote = _remote_read_pools.get(pool, False)
        self.keep_alive = {}  # batch -> buffers a worker copies out of this process
        self.strided_copies = StridedCopies(self.threshold)
        # Batches whose tasks share an argument object with the batch before
        # (see _shared_arguments): their share of the batch's pickle; and the
        # size of each such object's pickle.
        self.sharing = {}
        self.shared_sizes = {}
        # Batches go STREAMED (True) once the call's tasks turn out to carry
        # large buffers that workers copy out of this process; None: not yet
        # seen; False: tasks share buffers, so batches go whole.
        self.streaming = None
        # The classes and functions of __main__ this call's batches name (sent
        # with its functions: see MainNames), and how many of them have been sent.
        self.main_names = MainNames()
        self.main_names_sent = 0

    def _function_slot(self, function):
        # Keyed by the function itself: equal bound methods (a new object per
        # `obj.method` access) share a slot. Unhashable callables go by identity
        # (the table holds them, so their id stays theirs).
        try:
            key = ("f", function)
            hash(key)
        except TypeError:
            key = ("id", id(function))
        slot = self.function_index.get(key)
        if slot is None:
            slot = self.function_index[key] = len(self.functions)
            self.functions.append(function)
            self.function_dirty = True
        return slot

    def _begin(self):
        sent = list(self.main_names.found.items())
        try:
            # One pickle: a function of the script that is also sent by name is one object there.
            recording = _native.recording_now()
            self.recorded = self.recorded or recording is not None
            self.recording_sent = recording
            data = _function_frame(cloudpickle_dumps((tuple(self.functions), sent)), recording)
        except Exception as exc:
            try:
                cloudpickle_dumps(tuple(self.functions))
            except Exception:  # noqa: BLE001
                names = ", ".join(task_label(f, limit=0).rstrip("()") for f in self.functions)
                raise UnpicklableError(f"the function(s) {names} could not be pickled: {exc}") from exc
            names = ", ".join(name for name, _ in sent)
            raise UnpicklableError(
                f"perfkit.Parallel: the task arguments name {names} of __main__, which could not be "
                f"pickled to send them to the worker processes: {exc}"
            ) from exc
        self.pool_call = next(_call_ids)
        self.call_ids.add(self.pool_call)
        self.pool.begin_call(self.pool_call, data)
        self.function_dirty = False
        self.main_names_sent = len(sent)

    def run(self, announce=True):
        """The call's result batches, in order or as they come; first, once the
        first batches are out, one empty batch (_STARTED) if `announce`."""
        tasks = iter(self.iterable)
        dispatched = 0
        batch_size = self.parallel.batch_size
        auto = batch_size == "auto"
        size = 1 if auto else batch_size
        per_task = None
        parent_per_task = 0.0
        bytes_per_task = 0.0
        # One slow batch (a lazy generator's set-up, a GC pass, an import in a
        # worker's first task) must not shrink the next batches to one task.
        worker_costs, parent_costs = _RecentCosts(), _RecentCosts()
        remembered = None
        # The last batch's buffer spans, its buffers, its arguments by id, and
        # whether it shared some with the batch before it.
        previous = (set(), [], {}, False)
        in_flight = {}  # batch id -> (first index, mode, items)
        in_order = _InOrder()
        batch_ids = itertools.count()
        exhausted = False
        completed = False
        started_call = not announce
        pool = self.pool
        try:
            while True:
                # Dispatch while the window has room.
                while not exhausted and len(in_flight) < self.window:
                    if auto and per_task is not None:
                        size = self._auto_size(per_task, bytes_per_task, parent_per_task, dispatched)
                    # This thread's CPU time: being preempted by the workers is not a cost of drawing.
                    t_produce = time.thread_time()
                    head = None
                    if not self.functions:
                        # The first task names the call's (first) function.
                        head = next(tasks, _NO_TASK)
                        if head is _NO_TASK:
                            exhausted = True
                            break
                        function = _unpack(head, 0)[0]
                        self._function_slot(function)
                        remembered = auto and per_task is None and _cost_memory.get(_cost_key(function))
                        if remembered:
                            remembered_per_task, parent_per_task, bytes_per_task, streamed = remembered
                            if streamed and self.remote:
                                self.streaming = True  # its tasks carried large buffers: no whole first batch
                            # This process's cost is a fair prior (the first draw includes
                            # one-time set-up); the workers' is not: the function may
                            # cost far more on this call's input, and a batch sized by
                            # the last call's cost alone would run all of a generator's
                            # tasks on one worker. So until a worker has timed a batch
                            # of this call, batches hold at most UNTIMED_BATCH_TASKS.
                            parent_costs.add(parent_per_task)
                            left = (
                                self.total - dispatched
                                if self.total is not None
                                else _tasks_left(self.iterable)
                            )
                            size = _untimed_batch_size(
                                self._auto_size(
                                    remembered_per_task, bytes_per_task, parent_per_task, dispatched
                                ),
                                left,
                                self.n_jobs,
                                self.parallel.timeout,
                            )
                    mode = None
                    if len(self.functions) == 1:
                        # The usual case: one function; drawn and encoded in one pass.
                        chunk, mode, items = _native.draw_uniform_batch(tasks, size, self.functions[0], head)
                    else:
                        chunk = list(itertools.islice(tasks, size))
                    first = dispatched
                    if mode is None:
                        if not chunk:
                            exhausted = True
                            break
                        mode, items = self._encode(chunk, first)
                    count = len(items[1]) // 8 if mode == SINGLE_PACKED else len(items)
                    dispatched += count
                    self.parallel.n_dispatched_tasks = dispatched
                    payload, buffers = self._pickle_batch(first, mode, items)
                    if _native.recording_now() != self.recording_sent:
                        # A profiler started or stopped here since the workers were
                        # told, or one made with workers=False followed one made
                        # without: a generator made before a recording and drawn in it
                        # is recorded from this batch on, one drawn after it (or in
                        # a recording that leaves the workers out) no longer costs
                        # the workers a recording (a new FUNCTION frame).
                        self.function_dirty = True
                    if self.function_dirty or len(self.main_names.found) != self.main_names_sent:
                        # After pickling the batch: the workers get what it names of
                        # __main__ with the functions, in one FUNCTION frame (each new
                        # one also drops the shared-memory segments no call holds).
                        t_begin = time.thread_time()
                        self._begin()
                        t_produce += time.thread_time() - t_begin  # once per call, not per task
                    batch = next(batch_ids)
                    remote = self.remote and bool(buffers)
                    # A buffer the previous batch sent too (the data set every task
                    # indexes) goes once per batch whatever the batch's size: it is
                    # not its tasks' own. Counted as theirs, in bytes or in the time
                    # to copy it into shared memory, it cut batches to one task, and
                    # so sent it once per task.
                    spans = [_native.buffer_address(b) for b in buffers]
                    buffer_bytes = sum(b.nbytes for b in buffers)
                    own = sum(b.nbytes for b, span in zip(buffers, spans) if span not in previous[0])
                    t_submit = time.thread_time()
                    pool.submit(self.pool_call, batch, payload, buffers, remote)
                    t_submit = time.thread_time() - t_submit
                    if remote:
                        self.keep_alive[batch] = buffers  # the worker reads them from here
                    produced = time.thread_time() - t_produce
                    if buffer_bytes:
                        produced -= t_submit * (buffer_bytes - own) / buffer_bytes
                    batch_bytes = len(payload) + own
                    arguments, shared_bytes = {}, 0
                    if mode != SINGLE_PACKED and (
                        batch_bytes >= count * self.threshold
                        or produced >= count * self.PARENT_BATCH_SECONDS / 4
                        or previous[3]
                    ):
                        # Costly tasks (or the last batch's shared an argument): an
                        # argument object the batch before had too (a lookup table
                        # every task gets) is pickled in band once a batch, and
                        # unpickled once a batch in the worker, whatever the batch's
                        # size: not its tasks' own cost either. Its share of the
                        # batch's pickle is taken as its share of the time here
                        # (pickling, copying: per byte; timed apart, one pickle of
                        # it jitters as much as the tasks' cost).
                        shared_bytes, arguments = self._shared_arguments(mode, items, previous[2])
                        if shared_bytes:
                            shared_bytes = min(shared_bytes, len(payload))
                            self.sharing[batch] = shared_bytes / len(payload)
                            produced *= 1 - self.sharing[batch]
                            batch_bytes -= shared_bytes
                    if not (remembered and per_task is None):
                        parent_per_task = parent_costs.add(produced / count)
                    # (else a few-task batch of a known function: its cost is mostly
                    # the batch's own, and would shrink the next ones for three batches)
                    bytes_per_task = batch_bytes / count
                    # The buffers and arguments are held until the next batch is
                    # pickled: freed, their memory could be the next array's, and
                    # their ids the next objects', which would seem sent before.
                    previous = (set(spans), buffers, arguments, shared_bytes > 0)
                    # Only the encoded items stay (they name a task that fails): the
                    # caller's task tuples die young, which keeps the GC's work small.
                    in_flight[batch] = (first, mode, items)
                if not started_call:
                    started_call = True
                    yield _STARTED
                if not in_flight:
                    break
                event = self._next_event(in_flight)
                entry = in_flight.pop(event[2], None) if event[1] in self.call_ids else None
                if entry is not None:
                    self.keep_alive.pop(event[2], None)
                else:
                    # A late answer from an earlier, abandoned call: drop it (and its segment).
                    if event[0] == "reply":
                        _drop_segment(event[5])
                    continue
                first, mode, items = entry
                kind = event[0]
                if kind == "reply":
                    _, _, _, is_error, payload, segment, spans, pid = event
                    if self.recorded:
                        # (a reply of a batch recorded for this process's profiler
                        # carries the worker's call tree after its pickle; a failed
                        # batch's too: the calls up to the error, as cProfile keeps them)
                        # (not `size`: that is the next batch's number of tasks)
                        pickle_size = _native.adopt_worker_tree(payload, pid)
                        if pickle_size != len(payload):
                            payload = memoryview(payload)[:pickle_size]
                    if is_error:
                        _drop_segment(segment)
                        self._task_failed(payload, pid, first, mode, items)
                    try:
                        elapsed, results = _load_reply(payload, segment, spans, self.main_names.found)
                    except Exception as exc:
                        what = _tasks_text(first, len(_unpacked(mode, items)[1]))
                        _add_note(
                            exc,
                            f"perfkit.Parallel: the results of {what} came back from worker process {pid} "
                            "but could not be taken in here",
                        )
                        raise
                    elapsed, loading = elapsed
                    # (the shared objects' share of unpickling the batch, as here)
                    elapsed -= loading * self.sharing.pop(event[2], 0.0)
                    if auto:
                        # Per-task cost as the worker measured it (unpickling, running, no queueing):
                        # stable, unlike round trips, which include waiting behind other batches.
                        cost = max(elapsed, 1e-7) / max(len(results), 1)
                        if remembered and _confirms(remembered[0], elapsed, len(results)):
                            cost = remembered[0]  # a few tasks' time is mostly the batch's own
                        per_task = worker_costs.add(cost)
                        _cost_memory[_cost_key(self.functions[0])] = (
                            per_task,
                            parent_per_task,
                            bytes_per_task,
                            self.streaming is True,
                        )
                    self.progress.update(len(results))
                    if self.ordered:
                        yield from in_order.add(first, results)
                    else:
                        yield results
                elif kind == "died":
                    _, _, _, pid, reason, task = event
                    self._crashed(first, mode, items, pid, reason, task)
                else:
                    # This process could not start a worker or open a reply (say, out of file descriptors).
                    raise OSError(f"perfkit.Parallel: {event[3]}")
            completed = True
        finally:
            if not completed:
                # Given up (an error, a closed generator, Ctrl-C): queued batches
                # are dropped and running ones stopped, as joblib does. Their
                # workers may still be reading buffers out of this process,
                # which the caller may free as soon as this returns.
                for call in self.call_ids:
                    try:
                        pool.cancel(call)
                        pool.kill_busy(call)
                    except RuntimeError:
                        pass
            self.progress.close(completed)

    def _shared_arguments(self, mode, items, before):
        """``(bytes, arguments)``: the size in the pickle of the argument
        objects of this batch that the batch before had too (each pickled
        apart once a call), and the argument objects looked at here by id
        (`before`: the previous batch's; both held, so that an id stays its
        object's)."""
        arguments = {}
        # The first task's and the last's: an object every task gets is in
        # both, and a look at each task would cost tiny tasks more than their
        # pickling.
        for item in (items[0], items[-1]):
            for argument in _argument_objects(mode, item):
                arguments[id(argument)] = argument
        nbytes = 0
        sizes = {}
        for key in arguments.keys() & before.keys():
            size = self.shared_sizes.get(key)
            if size is None:
                try:
                    size = len(dumps(arguments[key], self.threshold)[0])
                except Exception:  # noqa: BLE001 - the batch's own pickling says what failed
                    size = 0
            sizes[key] = size
            nbytes += size
        self.shared_sizes = sizes  # (keyed by ids the arguments held keep theirs)
        return nbytes, arguments

    def _auto_size(self, per_task, bytes_per_task, parent_per_task, dispatched):
        # A batch is about TARGET_BATCH_SECONDS of a worker's time, so that
        # per-batch overhead stays small; but at most PARENT_BATCH_SECONDS of
        # this process's time (drawing the caller's tasks and pickling them):
        # for tiny tasks this process is the bottleneck, and short batches keep
        # the workers busy from the start, the caller's task objects few and
        # hot in the CPU cache, and the tail after the last task short.
        size = min(
            self.TARGET_BATCH_SECONDS / max(per_task, 1e-8),
            self.PARENT_BATCH_SECONDS / max(parent_per_task, 1e-8),
        )
        size = int(size)
        if bytes_per_task > 0:
            limit = self.MAX_BATCH_BYTES
            if self.streaming:
                # Bigger batches while the batches in flight hold at most
                # STREAMED_BYTES_IN_FLIGHT (a generator's arrays live until their batch is done).
                limit = min(self.MAX_STREAMED_BATCH_BYTES, self.STREAMED_BYTES_IN_FLIGHT // self.window)
                limit = max(limit, self.MAX_BATCH_BYTES)
            size = min(size, int(limit / bytes_per_task))
        left = self.total - dispatched if self.total is not None else _tasks_left(self.iterable)
        if left is not None:
            # At least two batches per worker, so that the end of the call stays
            # balanced; towards the end batches shrink with what is left, down
            # to MIN_TAIL_BATCH_SECONDS (shorter ones cost more than the
            # imbalance they save, and would skew the measured per-task cost).
            size = min(size, math.ceil((dispatched + left) / (2 * self.n_jobs)))
            shortest = math.ceil(self.MIN_TAIL_BATCH_SECONDS / max(per_task, 1e-8))
            size = min(size, max(math.ceil(left / (2 * self.n_jobs)), shortest))

        return max(1, min(size, 100_000))

    def _encode(self, chunk, first):
        """(FULL, items) for a batch of tasks as drawn (more than one function,
        keyword arguments, …); see perfkit._pool_common for the modes."""
        items = []
        slot = self._function_slot
        for index, task in enumerate(chunk, first):
            function, args, kwargs = _unpack(task, index)
            items.append((slot(function), args, kwargs))
        return FULL, items

    def _pickle_batch(self, first, mode, items):
        if mode == SINGLE_PACKED:
            # Plain ints or floats as bytes: nothing for perfkit's reducers, no
            # __main__ name to seek through (as the workers pickle such results).
            return pickle.dumps((first, mode, items), protocol=5), []
        with self.strided_copies:
            return self._pickle_objects(first, mode, items)

    def _pickle_objects(self, first, mode, items):
        streamed = None
        if self.streaming and len(items) > 1:
            streamed = self._pickle_streamed(first, mode, items)
        if streamed is not None:
            payload, buffers = streamed
        else:
            try:
                payload, buffers = dumps((first, mode, items), self.threshold, self.main_names)
            except Exception as exc:
                for index, item in enumerate(items, first):
                    self._check_arguments_picklable(index, mode, item)
                raise UnpicklableError(f"perfkit.Parallel: a batch could not be pickled: {exc}") from exc
            if buffers and self.remote and self.streaming is None:
                self.streaming = True  # the call's tasks carry large buffers: stream the next batches
        return payload, buffers

    def _pickle_streamed(self, first, mode, items):
        """(payload, buffers) of a STREAMED batch: each task pickled on its own,
        so that a worker copies in one task's large buffers at a time, just
        before it runs (see perfkit._worker.run_streamed).

        None when the tasks seem to share data: a large buffer's owner or a
        large argument object in two tasks, or a task whose pickle itself is
        large (a strided array, a big dict: pickled in band, it may be one
        object every task gets). Pickled whole, the batch sends what its tasks
        share once, as pickle's memo does; the call stops streaming."""
        blobs, buffers, spans, arguments, sized = [], [], set(), set(), set()
        for index, item in enumerate(items, first):
            try:
                blob, own = dumps(item, self.threshold, self.main_names)
            except Exception as exc:
                self._check_arguments_picklable(index, mode, item)
                raise UnpicklableError(f"perfkit.Parallel: a batch could not be pickled: {exc}") from exc
            # The memory itself, not the object: numpy exports a transposed array through a fresh view.
            own_spans = {_native.buffer_address(b) for b in own}
            shared = len(blob) >= self.threshold or not spans.isdisjoint(own_spans)
            for argument in _argument_objects(mode, item):
                if not shared and id(argument) in arguments and id(argument) not in sized:
                    # One object in two tasks: a small one (a dict of settings) costs
                    # little to send with each; a big one is measured by what it sends
                    # (a view, a container of arrays, a DataFrame whose blocks are
                    # made contiguous afresh for each pickle).
                    sized.add(id(argument))
                    alone, alone_buffers = dumps(argument, self.threshold, self.main_names)
                    shared = len(alone) + sum(b.nbytes for b in alone_buffers) >= self.threshold
                arguments.add(id(argument))
            if shared:
                self.streaming = False
                return None
            spans |= own_spans
            blobs.append(blob)
            buffers += own
        if not buffers:
            self.streaming = None  # no large buffers (any more): whole batches are cheaper to send
        return pickle.dumps((first, STREAMED, (mode, blobs)), protocol=5), buffers

    def _check_arguments_picklable(self, index, mode, item):
        """Raises UnpicklableError naming task `index` if its arguments cannot be pickled."""
        function, args, kwargs = self._decode(mode, item)
        _check_picklable(
            index,
            (function, args, kwargs),
            (args, kwargs),
            dumps,
            "the arguments of",
            "them to a worker process",
            " Pass picklable arguments, or use backend='threads'.",
        )

    def _task_failed(self, payload, pid, first, mode, items):
        info = pickle.loads(payload)
        index, label = info["task"], info["label"]
        if index < 0:
            index = first  # the batch could not be unpickled at all
        if label is None:
            # The worker no longer had the task's arguments (a STREAMED batch): named from ours.
            mode, items = _unpacked(mode, items)
            label = task_label(*self._decode(mode, items[index - first]))
            if info["kind"] == "unpickle":
                label = f"the arguments of {label}"
            elif info["kind"] == "shared_memory":
                label = f"the buffers of {label} in this process"
        if info["kind"] == "raised":
            where = f"task {index} ({label}) failed in worker process {info['pid']}"
        elif info["kind"] == "unpicklable_result" and info["type"] == "builtins.MemoryError":
            where = (
                f"the worker ran out of memory pickling the result of task {index} ({label}) to send it back"
            )
        elif info["kind"] == "unpicklable_result":
            where = f"the result of task {index} ({label}) could not be pickled to send it back"
        elif info["kind"] == "unpickle":
            where = f"a worker could not unpickle {label} (task {index} onwards)"
        else:
            where = f"task {index}: {label}"
        exc = None
        if info["exception"] is not None and info["kind"] != "unpicklable_result":
            try:
                exc = pickle.loads(info["exception"])
            except Exception:  # noqa: BLE001
                exc = None
            if not isinstance(exc, BaseException):
                exc = None  # (an exception whose __reduce__ makes something else of it)
        if exc is None:
            if info["type"] == "builtins.MemoryError":
                cls = MemoryError
            elif info["kind"] == "unpicklable_result":
                cls = UnpicklableError
            else:
                cls = TaskError
            exc = cls(f"{where}: {info['type']}: {info['message']}")
        cause = RemoteTraceback(f"\n{where}; its traceback there:\n\n{_with_source_lines(info['traceback'])}")
        exc.__cause__ = cause
        _add_note(exc, f"perfkit.Parallel: {where} (worker traceback above)")
        try:
            raise exc
        finally:
            # Else this frame and the exception hold each other (through its
            # traceback), and with them the call's results, until a GC pass.
            del exc, cause

    def _decode(self, mode, item):
        """(function, args, kwargs) of one encoded item (see _encode)."""
        if mode == FULL:
            slot, args, kwargs = item
            return self.functions[slot], args, kwargs
        if mode == SINGLE:
            return self.functions[0], (item,), {}
        return self.functions[0], item, {}

    def _crashed(self, first, mode, items, pid, reason, task):
        mode, items = _unpacked(mode, items)
        if 0 <= task - first < len(items):
            function, args, kwargs = self._decode(mode, items[task - first])
            what = f"task {task} ({task_label(function, args, kwargs)})"
        else:
            what = _tasks_text(first, len(items))
        raise WorkerCrashedError(
            f"perfkit.Parallel: worker process {pid} {reason} while running {what}; "
            "it has been replaced and the call aborted."
        )

    def _next_event(self, in_flight):
        """The pool's next event. With a timeout, for each batch (one task
        unless batch_size= or auto-sizing groups tiny ones; joblib's is per
        batch too): a timeout error once a batch has been running in a worker
        for that long, though other batches go on finishing."""
        timeout = self.parallel.timeout
        if timeout is None:
            return self.pool.next_event(None)
        while True:
            running = [entry for call in self.call_ids for entry in self.pool.running(call)]
            overdue = [batch for batch, seconds in running if seconds >= timeout]
            if overdue:
                self._timeout(in_flight, overdue)
            longest = max((seconds for _, seconds in running), default=0.0)
            event = self.pool.next_event(timeout - longest)
            if event is not None:
                return event
            if not running:
                self._timeout(in_flight)  # none started within `timeout`: none will

    def _timeout(self, in_flight, overdue=None):
        """Stops the call's running batches; raises, naming the `overdue`
        ones (else all those it stopped)."""
        running = []
        for call in self.call_ids:
            running += self.pool.kill_busy(call)
        names = []
        for batch, _pid in sorted(running):
            if overdue is not None and batch not in overdue:
                continue
            entry = in_flight.get(batch)
            if entry:
                first, _mode, items = entry
                _mode, items = _unpacked(_mode, items)
                names.append(_tasks_text(first, len(items)))
        what = ", ".join(names) if names else "the running tasks"
        raise ParallelTimeoutError(
            f"perfkit.Parallel: {what} did not finish within timeout={self.parallel.timeout} s; "
            "the workers running them were stopped and replaced."
        )


_cost_memory: dict = {}


class _RecentCosts:
    """A per-task cost that one outlier does not move: the median of the last
    three measurements (the smaller of the first two)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: list = []

    def add(self, cost: float) -> float:
        last = self.last
        last.append(cost)
        if len(last) > 3:
            del last[0]
        return min(last) if len(last) < 3 else sorted(last)[1]


_NO_TASK = object()


_FRAME_LINE = re.compile(r'  File "(?P<file>[^"]+)", line (?P<line>\d+), in ')


def _with_source_lines(traceback: str) -> str:
    """A worker's traceback text, with the lines of code it could not show
    taken from this process's linecache: a notebook's cells are there (IPython
    keeps them), not in a file a worker could read."""
    lines = traceback.splitlines(keepends=True)
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        found = _FRAME_LINE.match(line)
        shown = i + 1 < len(lines) and lines[i + 1].startswith("    ")
        if found is not None and not shown:
            source = linecache.getline(found["file"], int(found["line"])).strip()
            if source:
                out.append(f"    {source}\n")
    return "".join(out)


def _cost_key(function):
    """What a function's cost is remembered under between calls: its module,
    name and first line (the lambdas of a module are as many keys), through
    any partials to the function they wrap."""
    while isinstance(function, functools.partial):
        function = function.func
    code = getattr(function, "__code__", None)
    return (
        getattr(function, "__module__", None),
        getattr(function, "__qualname__", None) or repr(type(function)),
        getattr(code, "co_firstlineno", None),
    )


def _drop_segment(segment):
    """Lets go of a reply's buffers unread (a descriptor is closed; copied
    buffers go with their last reference)."""
    if isinstance(segment, int):
        os.close(segment)


# Values pickle copies whatever their identity: two tasks that get the same one share nothing.
_VALUE_TYPES = (int, float, complex, type(None), str)  # bool is an int


def _argument_objects(mode, item):
    """The argument objects of one encoded task (see _ProcessCall._encode)
    that two tasks could share, for _pickle_streamed."""
    if mode == FULL:
        _, args, kwargs = item
        values = (*args, *kwargs.values())
    elif mode == SINGLE:
        values = (item,)
    else:
        values = item
    return [v for v in values if not isinstance(v, _VALUE_TYPES)]


def _unpacked(mode, items):
    """(mode, items) of a batch with packed values unpacked (for naming a task)."""
    if mode == SINGLE_PACKED:
        return SINGLE, _native.unpack_values(*items)
    return mode, items


def _load_reply(payload, segment, spans, sent_main=None):
    """(seconds the worker took, results) of a reply frame (see perfkit._worker);
    its large buffers in `segment`: a descriptor to map (at `spans`), or the
    buffers the pool copied out of the worker (a list of `_native.CopiedBuffer`).
    `sent_main`: what the call sent of this process's __main__, by name (the
    results name it so)."""
    loads = pickle.loads
    if sent_main:

        def loads(data, buffers=None):
            return MainUnpickler(data, sent_main, buffers).load()

    if segment is None:
        elapsed, tag, results = loads(payload)
    elif isinstance(segment, list):
        # As memoryviews, as from a segment (a task may return a bare PickleBuffer).
        elapsed, tag, results = loads(payload, buffers=[memoryview(b) for b in segment])
    else:
        try:
            size = os.fstat(segment).st_size
            view = memoryview(mmap.mmap(segment, size, access=mmap.ACCESS_COPY)) if size else memoryview(b"")
        finally:
            os.close(segment)
        elapsed, tag, results = loads(payload, buffers=[view[o : o + n] for o, n in spans])
    if tag is not None:
        results = unpack_results(tag, results)
    return elapsed, results
