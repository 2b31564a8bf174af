"""cProfile's API on perfkit's recorder.

``Profiler`` mirrors ``cProfile.Profile`` (enable/disable, runcall/run/runctx,
create_stats/stats for ``pstats.Stats(profiler)``, print_stats, dump_stats,
context manager); ``run``/``runctx`` mirror ``cProfile.run``/``runctx``;
``profile`` is a context manager and decorator. The recording itself happens
in Rust (``perfkit._native.Session``); this module only adapts the API.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, TypeVar, overload

if TYPE_CHECKING:
    from collections.abc import Mapping

    from typing_extensions import Self

from perfkit import _native

__all__ = ["Profiler", "profile", "run", "runctx"]

F = TypeVar("F", bound=Callable[..., Any])

# The profiler's own frames (enable/disable/__exit__) are left out of profiles.
_THIS_FILE = os.path.abspath(__file__)
_HIDDEN_FILES = [__file__, _THIS_FILE]


class CodeLabel(NamedTuple):
    """Where a Python function is: what pstats reads from a code object."""

    co_filename: str
    co_firstlineno: int
    co_name: str


class ProfilerSubentry(NamedTuple):
    """cProfile's ``profiler_subentry``: one callee of an entry, as called from it."""

    code: str | CodeLabel
    callcount: int
    reccallcount: int
    totaltime: float
    inlinetime: float


class ProfilerEntry(NamedTuple):
    """cProfile's ``profiler_entry``: one function (times in seconds)."""

    code: str | CodeLabel
    callcount: int
    reccallcount: int
    totaltime: float
    inlinetime: float
    calls: list[ProfilerSubentry] | None


# The standard library's timers, by the clock perfkit reads for each.
_TIMER_CLOCKS = {
    **dict.fromkeys(
        (time.perf_counter, time.monotonic, time.time, time.perf_counter_ns, time.monotonic_ns, time.time_ns),
        "wall",
    ),
    **dict.fromkeys((time.process_time, time.thread_time, time.process_time_ns, time.thread_time_ns), "cpu"),
}


# The modules of a Jupyter or IPython kernel's own threads (its sockets'
# polling, its history, its heartbeat): recorded, they made a 0.5 s cell a
# 2 s profile led by epoll.poll.
_KERNEL_MODULES = ("ipykernel.", "IPython.", "jupyter_client.", "zmq.", "tornado.", "debugpy.")


def _threads_left_out(threads: str | None) -> list[int]:
    """Idents of the running threads a recording enabled now leaves out."""
    import threading

    if threads == "all":
        return []
    me = threading.get_ident()
    if threads == "new":
        return [t.ident for t in threading.enumerate() if t.ident is not None and t.ident != me]
    return [t.ident for t in threading.enumerate() if t.ident is not None and _is_kernel_thread(t)]


def _is_kernel_thread(thread) -> bool:
    target = getattr(thread, "_target", None)
    for owner in (type(thread), target):
        module = getattr(owner, "__module__", None) or ""
        if (module + ".").startswith(_KERNEL_MODULES):
            return True
    return False


class Profiler:
    """A deterministic call-tree profiler with ``cProfile.Profile``'s interface.

    Takes cProfile's arguments (``timer, timeunit, subcalls, builtins``).
    ``builtins=False`` records Python frames only (C calls are not rows, and
    cost far less); ``clock`` is ``"wall"`` (monotonic) or ``"cpu"`` (each
    thread's CPU time). Every thread is recorded, each with its own tree,
    but for a Jupyter or IPython kernel's own threads (``threads="all"``
    records those too); ``threads="new"`` records the thread that enables
    it and the threads started while it records, none of the others.
    perfkit reads its clock itself: a ``timer`` of the standard library's
    selects the matching clock (``time.process_time``: ``"cpu"``), any other
    is refused. Callers and callees are always recorded (``subcalls``).
    ``workers=False`` leaves ``perfkit.Parallel``'s worker processes out:
    by default, while it records, each worker records the batches sent to
    it and the profile holds one thread per worker ("worker process PID";
    a dask worker's: "dask worker ADDRESS (pid PID)"); without them it holds the caller alone, as cProfile's does, and the
    workers run their tasks at full speed.
    """

    def __init__(
        self,
        timer: Callable[[], float] | None = None,
        timeunit: float = 0.0,
        subcalls: bool = True,
        builtins: bool = True,
        *,
        clock: str | None = None,
        threads: str | None = None,
        workers: bool = True,
    ) -> None:
        if timer is not None:
            timer_clock = _TIMER_CLOCKS.get(timer)
            if timer_clock is None:
                raise TypeError(
                    f"perfkit.Profiler: timer={timer!r} is not supported: perfkit reads its clock "
                    "itself; use clock='wall' or clock='cpu'"
                )
            if clock is not None and clock != timer_clock:
                raise ValueError(f"timer={timer.__name__} measures {timer_clock} time, but clock={clock!r}")
            clock = timer_clock
        self._clock = clock or "wall"
        if threads not in (None, "all", "new"):
            raise ValueError(f"threads must be None, 'all' or 'new', not {threads!r}")
        self._threads = threads
        self._workers = bool(workers)
        self._session = self._new_session(builtins)
        self._started = False  # enabled since construction or the last clear()
        self.stats: dict = {}

    # -- recording -------------------------------------------------------
    def enable(self, subcalls: bool | None = None, builtins: bool | None = None) -> None:
        """Start recording. Raises RuntimeError if another profiler is active.

        cProfile's keywords: ``builtins`` switches the mode before anything
        is recorded (one recording has one mode: after that, ValueError until
        ``clear()``); ``subcalls`` is accepted, and callers and callees are
        recorded either way."""
        if builtins is not None and bool(builtins) != self._session.builtins:
            if self._started:
                raise ValueError(
                    f"perfkit.Profiler: cannot switch to builtins={bool(builtins)} in a recording made with "
                    f"builtins={self._session.builtins}; call clear() first, or use another Profiler"
                )
            self._session = self._new_session(bool(builtins))
        if self._session.enabled:
            # Already recording: nothing to do, and the threads are not looked
            # up again, which would be recorded as the program's calls.
            return
        self._session.enable(_threads_left_out(self._threads))
        self._started = True

    def __reduce__(self):
        # (else pickle's own "cannot pickle 'perfkit._native.Session' object")
        raise TypeError(
            "a perfkit.Profiler cannot be pickled, nor a function decorated with @perfkit.profile "
            "that holds one: to profile a task sent to other processes, profile inside it "
            "(with perfkit.profile(...): ...)"
        )

    def _new_session(self, builtins: bool) -> _native.Session:
        return _native.Session(
            builtins=builtins, clock=self._clock, hidden_files=_HIDDEN_FILES, workers=self._workers
        )

    def disable(self) -> None:
        """Stop recording; calls still in flight count as ending now."""
        self._session.disable()

    @property
    def enabled(self) -> bool:
        """Whether it is recording now (perfkit's; cProfile has no such attribute)."""
        return self._session.enabled

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self._session.disable()
        self._session.clear()
        self._started = False
        self.stats = {}

    def __enter__(self) -> Self:
        self.enable()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.disable()

    def runcall(self, func: Callable[..., Any], /, *args: Any, **kw: Any) -> Any:
        """Record ``func(*args, **kw)`` and return its result (cProfile's)."""
        self.enable()
        try:
            return func(*args, **kw)
        finally:
            self.disable()

    def run(self, cmd: str) -> Profiler:
        """Record ``exec(cmd)`` in ``__main__``'s namespace; returns the profiler (cProfile's)."""
        import __main__

        namespace = __main__.__dict__
        return self.runctx(cmd, namespace, namespace)

    def runctx(self, cmd: Any, globals: dict[str, Any], locals: Mapping[str, Any] | None) -> Profiler:
        """Record ``exec(cmd, globals, locals)``; returns the profiler (cProfile's)."""
        if isinstance(cmd, (str, bytes)):
            # Compiled without this module's `from __future__ import
            # annotations`, which exec() of a string would pass on to the
            # caller's code (its annotations turned into strings).
            cmd = compile(cmd, "<string>", "exec", dont_inherit=True)
        self.enable()
        try:
            exec(cmd, globals, locals)  # noqa: S102 - running the caller's code is the point, as in cProfile
        finally:
            self.disable()
        return self

    # -- results ---------------------------------------------------------
    def _repr_html_(self) -> str | None:
        """Jupyter's rich display: the viewer inline, once something was recorded."""
        if not self._started:
            return None
        return self.recording().to_html(iframe=True)

    def recording(self) -> _native.Recording:
        """The exact call tree recorded so far (all threads)."""
        return self._session.recording()

    def create_stats(self) -> None:
        """Stop and fill ``self.stats`` with the pstats dictionary (for ``pstats.Stats(self)``)."""
        self.disable()
        self.snapshot_stats()

    def snapshot_stats(self) -> None:
        """Fill ``self.stats`` with the pstats dictionary of what was recorded so far."""
        self.stats = self.recording().stats_dict()

    def getstats(self) -> list[ProfilerEntry]:
        """cProfile's ``getstats()``: one entry per function, with its callees
        in ``calls``. ``code`` is a string for a built-in, as in cProfile, and
        for a Python function an object with ``co_filename``,
        ``co_firstlineno`` and ``co_name`` (the code object is not kept)."""
        stats = self.recording().stats_dict()
        codes = {key: key[2] if key[:2] == ("~", 0) else CodeLabel(*key) for key in stats}
        callees: dict = {key: [] for key in stats}
        for callee, (_, _, _, _, callers) in stats.items():
            for caller, (nc, cc, tt, ct) in callers.items():
                if caller in callees:
                    callees[caller].append(ProfilerSubentry(codes[callee], nc, nc - cc, ct, tt))
        return [
            ProfilerEntry(codes[key], nc, nc - cc, ct, tt, callees[key] or None)
            for key, (cc, nc, tt, ct, _) in stats.items()
        ]

    def print_stats(self, sort: str | int | tuple = -1) -> None:
        """Print pstats' table, directories stripped, sorted by ``sort`` (cProfile's)."""
        import pstats

        if not isinstance(sort, tuple):
            sort = (sort,)
        pstats.Stats(self).strip_dirs().sort_stats(*sort).print_stats()

    def dump_stats(self, file: str | os.PathLike) -> None:
        """Write a ``.prof`` file: pstats and snakeviz read it; perfkit also reads the exact tree."""
        self.disable()
        self.recording().dump(os.fspath(file))


def _unwritable(path: str) -> tuple[int, str] | None:
    """Why the profile could not be written to ``path`` (the errno open()
    would raise, and the reason in words), or None: an existing file (a
    device, a FIFO, through a link) must be writable, a new one needs a
    writable directory."""
    if os.path.isdir(path):
        return errno.EISDIR, "it is a directory"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else (errno.EACCES, "it is not writable")
    directory = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(directory):
        return errno.ENOENT, "no such directory"
    return (
        None if os.access(directory, os.W_OK | os.X_OK) else (errno.EACCES, "the directory is not writable")
    )


class _ProfileBlock:
    """What :func:`profile` returns when not given a function: a context
    manager, and a decorator whose calls accumulate in one profile."""

    def __init__(
        self,
        output: str | os.PathLike[str] | None,
        builtins: bool,
        clock: str,
        print_stats: int | None,
        sort: str | int,
        threads: str | None,
        workers: bool = True,
    ) -> None:
        if output is not None:
            # Said now, as `perfkit record` says it before the program runs:
            # found only when the first call ended, it took that call's result.
            path = os.fspath(output)
            refused = _unwritable(os.path.abspath(path)) if path else (errno.ENOENT, "the name is empty")
            if refused is not None:
                code, reason = refused
                raise OSError(code, f"perfkit.profile cannot write the profile: {reason}", path)
        self.output = output
        self.print_limit = print_stats
        self.sort = sort
        self.profiler = Profiler(builtins=builtins, clock=clock, threads=threads, workers=workers)
        # Calls of the decorated function and `with`s in flight, in every
        # thread: the first starts the recording, the last stops and reports
        # it. Counted under a lock (taken from Rust: its methods would be
        # recorded): threads calling one decorated function at once lost
        # calls, a recording stopped under a call still running, and two
        # enabling at once saw "cannot record here (Already mutably borrowed)".
        self._calls = 0
        # (re-entrant: a signal handler or a warning hook may call the
        # decorated function while this thread holds it)
        self._calls_lock = threading.RLock()
        # Per thread, its `with`s in flight, innermost first: whether each
        # counts, as nested pairs (no method call runs while recording: it
        # would be in the profile).
        self._entered = threading.local()
        self._warned = False

    def _enable(self, stacklevel: int, where: Any = None) -> bool:
        """Starts recording; False, with one warning, while another profiler
        records (`perfkit record` around the program, say): the block or call
        then runs unrecorded. A program must not behave differently, or fail,
        because it is being profiled; the context form raised, and the
        decorator said nothing."""
        try:
            self.profiler.enable()
        except RuntimeError as e:
            if not self._warned:
                self._warned = True
                what = (
                    f"no profile is written to {os.fspath(self.output)!r}"
                    if self.output is not None
                    else "nothing is reported"
                )
                message = f"perfkit.profile cannot record here ({e}): the code runs unrecorded and {what}"
                while isinstance(where, functools.partial):
                    where = where.func
                code = getattr(where, "__code__", None)
                if code is None:
                    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)
                else:
                    # A coroutine's first step runs from the event loop: the
                    # warning names the decorated function instead.
                    warnings.warn_explicit(
                        message,
                        RuntimeWarning,
                        code.co_filename,
                        code.co_firstlineno,
                        getattr(where, "__module__", None),
                    )
            return False
        return True

    def __enter__(self) -> Profiler:
        started = self._call_starts()
        try:
            outer = self._entered.pairs
        except AttributeError:  # (this thread's first)
            outer = ()
        self._entered.pairs = (started, outer)
        return self.profiler

    def __exit__(self, *exc_info: object) -> None:
        started, self._entered.pairs = self._entered.pairs
        self._call_ends(started)

    def _report(self) -> None:
        if self.output is not None:
            self.profiler.dump_stats(self.output)
        if self.print_limit is not None:
            import pstats

            pstats.Stats(self.profiler).sort_stats(self.sort).print_stats(self.print_limit)

    def __call__(self, func: F) -> F:
        import inspect

        profiler = self.profiler
        if inspect.isgeneratorfunction(func):
            # The body runs after the call has returned the generator: the
            # recording spans its iteration, from its first resumption to its
            # end or close (and what the consumer runs between items, as
            # around a loop between enable() and disable()).
            @functools.wraps(func)
            def generating(*args: Any, **kwargs: Any) -> Any:
                started = self._call_starts(func)
                try:
                    return (yield from func(*args, **kwargs))
                finally:
                    self._call_ends(started)

            generating.profiler = profiler  # type: ignore[attr-defined]
            return generating  # type: ignore[return-value]
        if inspect.isasyncgenfunction(func):

            @functools.wraps(func)
            async def async_generating(*args: Any, **kwargs: Any) -> Any:
                started = self._call_starts(func)
                try:
                    # `yield from` for an async generator: what the consumer
                    # sends or throws in (asend, athrow; aclose through the
                    # finally) reaches the decorated one.
                    inner = func(*args, **kwargs)
                    try:
                        item = await inner.__anext__()
                        while True:
                            try:
                                sent = yield item
                            except GeneratorExit:
                                raise
                            except BaseException as e:  # noqa: BLE001 - thrown in by athrow: passed on
                                item = await inner.athrow(e)
                            else:
                                item = await inner.asend(sent)
                    except StopAsyncIteration:
                        return
                    finally:
                        await inner.aclose()
                finally:
                    self._call_ends(started)

            async_generating.profiler = profiler  # type: ignore[attr-defined]
            return async_generating  # type: ignore[return-value]
        if inspect.iscoroutinefunction(func):
            # Recording spans the awaits: what the thread runs meanwhile (the
            # event loop's other tasks) is in it, as around an awaited call
            # between enable() and disable().
            @functools.wraps(func)
            async def awaiting(*args: Any, **kwargs: Any) -> Any:
                started = self._call_starts(func)
                try:
                    return await func(*args, **kwargs)
                finally:
                    self._call_ends(started)

            awaiting.profiler = profiler  # type: ignore[attr-defined]
            return awaiting  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = self._call_starts()
            try:
                return func(*args, **kwargs)
            finally:
                self._call_ends(started)

        wrapper.profiler = profiler  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    def _call_starts(self, coroutine_function: Any = None) -> bool:
        """A call of the decorated function, or a `with`, begins. The first
        of those that overlap (recursive calls, nested blocks, coroutines
        awaited together, calls in other threads) starts the recording and
        the last one to end stops and reports it. Whether this one counts:
        while another perfkit profiler records (one recording at a time), it
        runs unrecorded here rather than fail."""
        _native.acquire_unrecorded(self._calls_lock)
        try:
            if self._calls == 0 and not self._enable(stacklevel=3, where=coroutine_function):
                return False
            self._calls += 1
            return True
        finally:
            _native.release_unrecorded(self._calls_lock)

    def _call_ends(self, started: bool) -> None:
        if not started:
            return
        _native.acquire_unrecorded(self._calls_lock)
        try:
            self._calls -= 1
            if self._calls == 0:
                self.profiler.disable()
                self._report()
        finally:
            _native.release_unrecorded(self._calls_lock)


@overload
def profile(output: F) -> F: ...
@overload
def profile(
    output: str | os.PathLike[str] | None = None,
    *,
    builtins: bool = True,
    clock: str = "wall",
    print_stats: int | None = None,
    sort: str | int = "cumulative",
    threads: str | None = None,
    workers: bool = True,
) -> _ProfileBlock: ...
def profile(
    output: str | os.PathLike[str] | Callable[..., Any] | None = None,
    *,
    builtins: bool = True,
    clock: str = "wall",
    print_stats: int | None = None,
    sort: str | int = "cumulative",
    threads: str | None = None,
    workers: bool = True,
) -> Any:
    """Profile a block, or every call of a function.

    ``with perfkit.profile("out.prof") as prof: ...``, ``@perfkit.profile``
    or ``@perfkit.profile("out.prof", builtins=False)``. The file (if named)
    is written atomically when the block or each call ends; ``print_stats=N``
    prints the top N rows sorted by ``sort``; ``threads`` and ``workers``
    are :class:`Profiler`'s. The decorated function keeps
    its name and docstring, works on methods, and has a ``.profiler``
    attribute holding every call's results. A decorated generator (or
    async generator) function is recorded from its first resumption to its
    end or close: its body runs after the call has returned.
    """
    _check_sort_key(sort)
    if callable(output):  # used bare: @perfkit.profile
        return _ProfileBlock(None, builtins, clock, print_stats, sort, threads, workers)(output)
    return _ProfileBlock(output, builtins, clock, print_stats, sort, threads, workers)


def _check_sort_key(sort: str | int) -> None:
    """Refuses now a key pstats would refuse only when the profile is
    printed: after the profiled code ran, in place of its result."""
    import pstats

    try:
        pstats.Stats().sort_stats(sort)
    except (KeyError, TypeError):
        raise ValueError(f"perfkit.profile: sort={sort!r} is not one of pstats' sort keys") from None


def run(statement: str, filename: str | None = None, sort: str | int = -1) -> None:
    """Like ``cProfile.run``: profile ``statement`` in ``__main__``; write or print the stats."""
    import __main__

    namespace = __main__.__dict__
    return runctx(statement, namespace, namespace, filename, sort)


def runctx(
    statement: str,
    globals: dict[str, Any],
    locals: Mapping[str, Any] | None,
    filename: str | None = None,
    sort: str | int = -1,
) -> None:
    """Like ``cProfile.runctx``."""
    prof = Profiler()
    try:
        prof.runctx(statement, globals, locals)
    except SystemExit:
        pass
    finally:
        if filename is not None:
            prof.dump_stats(filename)
        else:
            prof.print_stats(sort)
