"""Type stubs for perfkit's Rust extension module."""

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from os import PathLike
from typing import Any, Generic, TypeVar, final

from typing_extensions import ParamSpec, TypeAlias

__version__: str
# (PyO3 lists every name the module adds)
__all__ = [
    "WORKER_TREE_MARK",
    "CopiedBuffer",
    "Delayed",
    "ProfileError",
    "Recording",
    "Session",
    "WorkerPool",
    "__version__",
    "acquire_unrecorded",
    "adopt_dask_tree",
    "adopt_worker_tree",
    "buffer_address",
    "cache_after_fork",
    "cache_entries",
    "cache_flush",
    "cache_hash",
    "cache_key_of_scalars",
    "cache_load",
    "cache_load_head",
    "cache_reduce_size",
    "cache_remove",
    "cache_store",
    "cache_store_later",
    "cache_wait",
    "cli_main",
    "contains_bytes",
    "delayed",
    "delayed_forget",
    "draw_uniform_batch",
    "keep_pool_room",
    "kill_group_when_parent_dies",
    "load",
    "make_pool_room",
    "pack_values",
    "pool_room_held",
    "read_process_memory",
    "recording_now",
    "release_unrecorded",
    "run_packed",
    "run_tasks",
    "set_self_ptracer",
    "shm_dir",
    "shm_segments",
    "unpack_values",
]

_P = ParamSpec("_P")
_R_co = TypeVar("_R_co", covariant=True)

_Key: TypeAlias = tuple[str, int, str]
_Edge: TypeAlias = tuple[int, int, float, float]
_StatsDict: TypeAlias = dict[_Key, tuple[int, int, float, float, dict[_Key, _Edge]]]
_Node: TypeAlias = tuple[int, int, int, int, int]

class ProfileError(ValueError):
    """A profile's bytes could not be read (not a profile, truncated,
    damaged) or written. A file the system refuses (missing, a directory, no
    permission, disk full) is the OSError subclass ``open()`` would raise."""

@final
class Session:
    """A recording that hooks into the interpreter while enabled (one at a time per process)."""

    def __new__(
        cls,
        builtins: bool = True,
        clock: str = "wall",
        hidden_files: Sequence[str] = ...,
        hidden_builtins: Sequence[str] = ...,
        yields: bool = False,
        workers: bool = True,
    ) -> Session: ...
    def enable(self, left_out: Sequence[int] = ...) -> None:
        """Start recording, but not the running threads of these idents; RuntimeError if
        another profiler or frame-evaluation hook is active."""
    def disable(self) -> None: ...
    def clear(self) -> None: ...
    def leave_this_thread(self) -> None:
        """Stop recording the calling thread until the next disable; the others go on."""
    @property
    def enabled(self) -> bool: ...
    @property
    def builtins(self) -> bool: ...
    def recording(self) -> Recording: ...
    def tree_bytes(self) -> bytes:
        """The tree recorded so far, for :func:`adopt_worker_tree` in the process this one works for."""
    def mark_current_call(self) -> tuple[int, int, int] | None:
        """Mark the calling Python function's call, in this thread, to take the calls below it
        from later; None when this session is not recording here or did not see it start."""
    def take_calls_below(self, mark: tuple[int, int, int], name: str) -> bytes | None:
        """The calls recorded below a marked call since the last take there, taken out of this
        session, as one thread named `name`, for :func:`adopt_dask_tree`; None for a mark not
        of this session."""

@final
class Recording:
    """An exact (or, from a foreign cProfile file, inferred) call tree."""

    def stats_dict(self) -> _StatsDict:
        """The pstats dictionary, as ``cProfile.Profile().stats`` holds it."""
    def create_stats(self) -> None:
        """Nothing to do: ``pstats.Stats(recording)`` calls it, as on a ``cProfile.Profile``."""
    @property
    def stats(self) -> _StatsDict:
        """``stats_dict()``, where ``pstats.Stats(recording)`` reads it."""
    @stats.setter
    def stats(self, value: object) -> None: ...
    def to_html(self, label: str | None = None, iframe: bool = False) -> str:
        """The viewer's self-contained page (``perfkit export``'s); ``iframe``: inside an ``<iframe srcdoc>``."""
    def _repr_html_(self) -> str: ...
    def dump(self, path: str | PathLike[str]) -> None:
        """Write a pstats-compatible ``.prof`` that also carries the exact tree (atomic)."""
    def threads(self) -> list[tuple[str, int, int, list[_Node]]]:
        """``(name, thread_id, pid, nodes)``; nodes are ``(func, parent, calls, own_ns, total_ns)``, root first."""
    def funcs(self) -> list[_Key]: ...
    @property
    def exact(self) -> bool: ...
    @property
    def duration(self) -> float: ...

def load(path: str | PathLike[str]) -> Recording:
    """Read a perfkit or cProfile ``.prof``, collapsed stacks or speedscope JSON."""

def acquire_unrecorded(lock: Any) -> None:
    """Take ``lock`` (``perfkit.profile``'s count of calls in flight) with no call event for its methods."""

def release_unrecorded(lock: Any) -> None:
    """Release ``lock`` as :func:`acquire_unrecorded` takes it."""

def recording_now() -> tuple[bool, str] | None:
    """``(builtins, clock)`` of the profiler recording in this process, or None (also when
    it was made with ``workers=False``: a ``perfkit.Parallel`` call's workers do not record)."""

WORKER_TREE_MARK: bytes

def adopt_worker_tree(payload: bytes | memoryview, pid: int) -> int:
    """Take the call tree a worker put after a reply's pickle into the profiler recording
    here; returns the length of the pickle (the whole payload when it carries no tree)."""

def adopt_dask_tree(tree: bytes) -> bool:
    """Take a batch's call tree that a dask worker sent into the profiler recording here, as
    one thread per worker process; False when none records here (or on another clock or
    mode). RuntimeWarning for a tree that cannot be read."""

def cli_main(argv: list[str]) -> int:
    """Run the ``perfkit`` command line; returns the exit code."""

# -- cache (perfkit-cache; used by perfkit.memory) ----------------------------------------------

_Ranges: TypeAlias = list[tuple[int, int]]

def cache_hash(prefix: bytes, stream: bytes, buffers: Iterable[object]) -> str:
    """xxh3-128 (32 hex digits) of a prefix, a pickle stream and its out-of-band buffers (read in place)."""

def cache_key_of_scalars(prefix: bytes, values: tuple[object, ...]) -> str | None:
    """The cache key of plain values (None, bool, 64-bit int, float, str, bytes), hashed
    without pickling; None when any value is of another type."""

def cache_load(
    entry: str, alloc: Callable[[int], object] | None = None, key: str | None = None
) -> None | str | bytes | tuple[bytearray | object, int, int, _Ranges]:
    """None (no entry), the reason it is corrupt, the pickle stream (a small entry without
    buffers), or (bytes holder, stream offset, stream length, buffer ranges): memory the
    caller owns (a bytearray, or alloc(n) for entries of 1 MiB or more). ``key``: the key
    the entry's metadata must name (an entry of another call at this path is corrupt)."""

def cache_load_head(
    entry: str, touch: bool = True, writable: bool = False, keep_open: bool = False, key: str | None = None
) -> None | str | tuple[bytes, _Ranges, bytes] | tuple[bytes, _Ranges, bytes, int | None]:
    """None, the reason it is corrupt, or (pickle stream, buffer ranges, metadata JSON); buffers are not read.
    ``keep_open``: and a descriptor of the file read (the caller maps and closes it). ``key``:
    the key the entry's metadata must name (checked before the entry is touched or marked)."""

def cache_store(
    entry: str,
    flags: int,
    metadata_json: str,
    stream: bytes,
    buffers: Iterable[object],
    durable: bool = False,
) -> int:
    """Write an entry and publish it atomically (replacing any); its size in bytes. OSError on failure."""

def cache_store_later(
    entry: str,
    flags: int,
    metadata_json: str,
    stream: bytes,
    buffers: Iterable[object],
    label: str,
    root: str,
) -> list[tuple[str, int | None, str]] | None:
    """Store an entry, in the background when small (readable at once by this process).
    ``root``: the cache's location (absolute), which the background writer never creates
    again once removed (shutil.rmtree of it, or of a directory above or below it, drops
    the entries queued there first: an audit hook, installed at the first such store).
    Returns the failures of earlier background writes as [(label, errno or None, message)], or None."""

def cache_wait(entry: str) -> None:
    """Wait until this entry, if queued for the background writer, is on disk."""

def cache_flush() -> list[tuple[str, int | None, str]] | None:
    """Wait until every queued entry is on disk; the failures as [(label, errno or None, message)], or None."""

def cache_after_fork() -> None:
    """In a forked child: start with an empty write queue (the parent writes its own)."""

def cache_remove(path: str) -> bool:
    """Remove an entry file or a directory tree atomically (dropping entries queued under it);
    False if it did not exist."""

def cache_entries(root: str) -> list[tuple[str, int, float]]:
    """(path, bytes, last use in epoch seconds) of every entry under root, least recently used first."""

def cache_reduce_size(
    root: str, bytes_limit: int | None = None, items_limit: int | None = None, age_limit: float | None = None
) -> list[str]:
    """Evict least recently used entries until the limits hold; the removed paths."""

# --- perfkit.Parallel's engine (crates/perfkit-pool; driven by perfkit/parallel.py) ---

@final
class CopiedBuffer:
    """One of a reply's large buffers copied out of a worker: a writable buffer (``memoryview(it)``)."""

    def __len__(self) -> int: ...
    # (the buffer protocol is a Python-level method from 3.12 on, PEP 688)
    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...

@final
class WorkerPool:
    """Worker processes (``program args…``) kept alive across calls; GIL released while waiting."""

    def __new__(
        cls,
        n_workers: int,
        program: str | PathLike[str],
        args: list[str],
        env: list[tuple[str, str]],
        copy_results: bool = True,
    ) -> WorkerPool:
        """``copy_results``: large result buffers are copied straight out of the workers
        where the kernel allows it (else they come in shared-memory segments)."""
    @property
    def size(self) -> int: ...
    @property
    def alive(self) -> bool: ...
    @property
    def segment_prefix(self) -> str: ...
    def pids(self) -> list[int]: ...
    def begin_call(self, call: int, function: bytes) -> None:
        """The pickled function table of call ``call`` (sent to each worker once); drops
        the shared-memory segments the previous call left unused."""
    def submit(self, call: int, batch: int, payload: bytes, buffers: list[memoryview], remote: bool) -> None:
        """Queue a batch; ``buffers`` (pickle-5 out-of-band) are copied into shared memory, or
        with ``remote`` read by the worker straight from this process (keep them alive until the reply)."""
    def next_event(self, timeout: float | None = None) -> tuple | None:
        """``("reply", call, batch, is_error, payload, segment, spans, pid)`` (``segment``: a
        descriptor to map, a list of ``CopiedBuffer``, or None), ``("died", call, batch, pid, reason,
        task)`` or ``("failed", call, batch, message)`` (no worker could be started, or its
        results could not be taken in here);
        None after ``timeout`` seconds. Raises KeyboardInterrupt on Ctrl-C."""
    def cancel(self, call: int) -> int: ...
    def kill_busy(self, call: int) -> list[tuple[int, int]]: ...
    def running(self, call: int) -> list[tuple[int, float]]:
        """The batches of `call` that workers are running: (batch, seconds running)."""
    def pending(self) -> int: ...
    def terminate(self) -> None: ...
    def close(self) -> None: ...
    def close_at_exit(self) -> None:
        """Idle workers exit on end of file (output flushed, atexit run); busy ones are killed."""

def delayed(function: Callable[_P, _R_co]) -> Delayed[_P, _R_co]:
    """``delayed(f)(*args, **kwargs)`` returns ``(f, args, kwargs)`` (joblib's task format).
    The same wrapper is handed out again for the same plain function (until ``delayed_forget``)."""

def delayed_forget() -> None:
    """Drops the wrapper ``delayed`` keeps for reuse."""

@final
class Delayed(Generic[_P, _R_co]):
    """What ``delayed(f)`` returns (made only by ``delayed``). Type checkers
    hold it to ``f``'s parameters, and ``Parallel`` reads ``f``'s result type
    from the task."""

    def __call__(
        self, *args: _P.args, **kwargs: _P.kwargs
    ) -> tuple[Callable[_P, _R_co], tuple[Any, ...], dict[str, Any]]: ...
    @property
    def __wrapped__(self) -> Callable[_P, _R_co]: ...
    # The wrapped function's (as functools.wraps gives joblib's wrapper); absent where it lacks them.
    __name__: str
    __qualname__: str

def draw_uniform_batch(
    iterator: Iterator[Any], n: int, function: Callable[..., Any], head: Any = None, pack: bool = True
) -> tuple[list[Any] | None, int | None, Any]:
    """Up to ``n`` tasks (``head`` first, if given, then from ``iterator``):
    ``(None, 3, (tag, bytes))`` when every one is ``(function, (x,), {})`` with a plain int
    (or every one a plain float), ``(None, 2, [x…])`` / ``(None, 0, [args…])`` when every one is
    ``(function, args, {})``, else ``(tasks_as_drawn, None, None)``. ``pack=False``: never packed."""

def pack_values(values: list[Any]) -> tuple[str, bytes] | None:
    """``("q", bytes)`` for a list of plain ints within 64 bits, ``("d", bytes)`` for plain
    floats (8 bytes each, native order); None for anything else."""

def unpack_values(tag: str, data: bytes) -> list[Any]:
    """The list ``pack_values`` packed."""

def contains_bytes(haystack: bytes, needle: bytes) -> bool:
    """Whether ``needle`` occurs in ``haystack`` (``needle in haystack``, vectorized)."""

def run_tasks(
    functions: tuple[Callable[..., Any], ...],
    mode: int,
    items: list[Any],
    status: memoryview | None,
    first: int,
) -> tuple[list[Any], int | None, BaseException | None]:
    """Runs a batch (modes of perfkit._pool_common), storing each task's index in ``status[0]`` (if given):
    ``(results, None, None)`` or ``(results so far, failed index, exception)``."""

def run_packed(
    function: Callable[..., Any], tag: str, data: bytes, status: memoryview, first: int
) -> tuple[tuple[str, bytes] | list[Any] | None, int | None, BaseException | None]:
    """``run_tasks`` for packed arguments: results packed while they are plain values
    (else a list), or ``(None, failed index, exception)``."""

def shm_segments() -> list[str]:
    """This process's named shared-memory segments (leak checks)."""

def shm_dir() -> str: ...
def buffer_address(buffer: Any) -> tuple[int, int]:
    """``(address, length)`` of an object's contiguous buffer."""

def read_process_memory(pid: int, address: int, length: int, into: Any = None) -> Any:
    """Copy bytes out of another process (process_vm_readv) into ``into`` (a writable
    buffer of ``length`` bytes) or a new bytearray, and return it; OSError if refused."""

def keep_pool_room(on: bool) -> None:
    """In a worker: before each task (each batch's first, for large batches),
    make room in pymalloc's head pools of the 32-128 byte classes (blocks of
    the short pools ahead of the first with 8 free, up to 24 blocks, kept while
    those pools stay full), so that a task's hot loop does not start on a
    pool's last free block. Off also gives back every block kept."""

def make_pool_room() -> None:
    """What ``keep_pool_room(True)`` does before a task, now (tests, measurements)."""

def pool_room_held() -> int:
    """How many pymalloc blocks this process keeps to hold short pools full
    (1,024 at most)."""

def kill_group_when_parent_dies() -> None:
    """In a worker that leads its process group: the signal it receives when its
    parent dies (a real-time one) kills the group, the processes its tasks
    started with it."""

def set_self_ptracer(enabled: bool) -> None:
    """Let this process's descendants read its memory under Yama ``ptrace_scope`` 1
    (``prctl(PR_SET_PTRACER, getpid())``), or withdraw that (``0``); OSError where there
    is no Yama or it refuses."""
