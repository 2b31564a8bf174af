"""A perfkit.Parallel worker process: ``python -m perfkit._worker``.

Started by the Rust pool (perfkit-pool) as a fresh interpreter with fd 3 =
tasks in, fd 4 = replies out, fd 5 = an 8-byte shared word where it stores
the index of the task it runs (so the parent can name the task if this
process dies). It exits on end of file on fd 3, i.e. when the parent goes.

Frames: a ``<IIQQQ`` header (kind, meta_len, call, batch, payload_len), the
meta (a shared-memory segment: ``name\\toff:len…``), the payload. A call's
function table comes once per worker in a FUNCTION frame (with the classes and
functions of the caller's __main__ that its batches name, after the caller's
sys.argv and sys.path); each BATCH frame
is ``pickle((first_index, mode, items))`` with its large buffers out of band
in the segment (or, meta ``vm:<pid>\taddress:len…``, still in the parent's
memory, copied in as unpickling reaches them; a STREAMED batch's tasks are
pickled one by one, so each task's buffers are copied just before it runs);
the reply is ``pickle((seconds, None, results))`` likewise
(``(seconds, tag, bytes)`` when the results are packed plain values), or an
ERROR frame describing the first failing task. Where the BATCH frame says
RESULTS_IN_PLACE (the parent can read this process), the results' large
buffers stay here and the meta gives their addresses (``vm:<pid>\t…``), for
the parent to copy out. A RELEASE frame says the parent has opened the
results segment of the last reply, or copied its buffers.
"""

from __future__ import annotations

import gc
import io
import math
import mmap
import os
import pickle
import select
import struct
import sys
import threading
import time
import traceback
import types

from perfkit import _native
from perfkit._native import (
    buffer_address,
    keep_pool_room,
    kill_group_when_parent_dies,
    pack_values,
    read_process_memory,
    run_packed,
    run_tasks,
    unpack_values,
)
from perfkit._pool_common import (
    ARGS_ONLY,
    FULL,
    SINGLE,
    SINGLE_PACKED,
    STREAMED,
    MainNames,
    dumps,
    pack_numpy_scalars,
    task_label,
    with_worker_tree,
)

HEADER = struct.Struct("<IIQQQ")
FUNCTION, BATCH, RESULT, ERROR, RELEASE = 1, 2, 3, 4, 5
SEGMENT_RETAINED = 1  # reply flag: a task kept a reference into the batch's segment
RESULTS_IN_PLACE = 2  # batch flag: leave the results' large buffers here for the parent to copy
TASK_FD, REPLY_FD, STATUS_FD = 3, 4, 5


def shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else __import__("tempfile").gettempdir()


def map_segment(meta: bytes):
    """Maps a batch's segment copy-on-write (writable, no copy until written);
    returns (mapping, view, a memoryview per buffer), or (None, empty view,
    RemoteSpans) for buffers to copy out of the parent.

    ``memfd:<pid>:<fd>``: the parent's reusable segment, reached through
    /proc; ``perfkit-…``: a named file in /dev/shm, unlinked at once."""
    name, *spans = meta.decode().split("\t")
    if name.startswith("vm:"):
        # Buffers copied straight out of the parent's memory (no shared file), as unpickling needs them.
        return None, memoryview(b""), RemoteSpans(int(name[3:]), spans)
    if name.startswith("memfd:"):
        pid, fd_number = (int(x) for x in name[6:].split(":"))
        fd = os.open(f"/proc/{pid}/fd/{fd_number}", os.O_RDONLY)
    elif "/" in name or not name.startswith("perfkit-"):
        raise ValueError(f"bad segment name {name!r}")
    else:
        path = os.path.join(shm_dir(), name)
        fd = os.open(path, os.O_RDONLY)
        os.unlink(path)
    try:
        size = os.fstat(fd).st_size
        mapping = _map_private(fd, size) if size else None
    finally:
        os.close(fd)
    view = memoryview(mapping) if mapping is not None else memoryview(b"")
    out = []
    for span in spans:
        off, length = (int(x) for x in span.split(":"))
        out.append(view[off : off + length])
    return mapping, view, out


def _map_private(fd, size):
    """Copy-on-write mapping: reads map the parent's pages (the kernel's
    fault-around maps 16 at a time), a write copies only the page written.
    (No MAP_POPULATE: on a writable private mapping it would copy every page.)"""
    return mmap.mmap(fd, size, access=mmap.ACCESS_COPY)


def _idle_seconds():
    """PERFKIT_WORKER_IDLE_RELEASE: seconds >= 0; None (never) for inf or
    values select() cannot take; the default for what is not a number."""
    try:
        value = float(os.environ.get("PERFKIT_WORKER_IDLE_RELEASE", "30"))
    except ValueError:
        return 30.0
    if math.isnan(value) or value < 0:
        return 30.0
    return value if value < 1e8 else None


class RemoteBuffers:
    """Buffers that arrays copied out of the parent land in, kept for reuse by
    length: a fresh one costs a page fault per 4 KiB on first use.

    Each is an anonymous mapping, so a dropped one goes back to the system at
    once (freed malloc memory may stay in the heap). At most ``MAX`` bytes are
    kept, the least recently used length dropped first, and all of them go
    once the worker has waited ``IDLE_SECONDS`` for work: an idle worker holds
    nothing for long, and a loop of calls with and without arrays does not
    map and fault its buffers afresh on every call. (Dropping them at each
    call without arrays also made the next CPU-bound tasks here run 15 %
    slower for as long as the worker lived, on the Firecracker VM these
    benchmarks run on: measured, not understood.)"""

    MAX = 64 << 20
    IDLE_SECONDS = _idle_seconds()

    def __init__(self) -> None:
        self.free: dict = {}  # length -> [buffer, …]; least recently used length first
        self.held = 0

    def take(self, length: int):
        free = self.free.get(length)
        if not free:
            return mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE) if length else bytearray()
        self.held -= length
        if len(free) == 1:
            del self.free[length]
        return free.pop()

    def give_back(self, buffers) -> list:
        """Keeps ``buffers`` for reuse; returns those still in use (not kept)."""
        in_use = []
        for b in buffers:
            length = len(b)
            if not length or length > self.MAX:
                continue
            # Referenced only as in _unkept_refs (`buffers`, `b`, getrefcount's argument): no task kept it.
            if sys.getrefcount(b) > self.UNKEPT_REFS:
                in_use.append(b)
                continue
            free = self.free.pop(length, [])
            free.append(b)
            self.free[length] = free  # now the most recently used length
            self.held += length
        while self.held > self.MAX:
            self._drop_one(next(iter(self.free)))
        return in_use

    def clear(self) -> None:
        self.free.clear()
        self.held = 0

    @staticmethod
    def _unkept_refs() -> int:
        """What getrefcount says in give_back's loop of a buffer nothing else
        holds: 3 on CPython 3.9–3.13; measured rather than assumed, as an
        interpreter that borrows the loop variable's reference says 2."""
        buffers = [bytearray(1)]
        for b in buffers:
            return sys.getrefcount(b)
        raise AssertionError("unreachable")

    def _drop_one(self, length: int) -> None:
        free = self.free[length]
        free.pop()
        self.held -= length
        if not free:
            del self.free[length]


class RemoteReadError(OSError):
    """A buffer could not be copied out of the parent (not the arguments' fault)."""


class RemoteSpans:
    """A batch's buffers that are still in the parent, as the iterator that
    ``pickle.loads(..., buffers=)`` draws from: each is copied in when the
    unpickler reaches it. A streamed batch thus copies a task's buffers just
    before the task runs, while the CPU cache still holds what the task reads."""

    def __init__(self, pid: int, spans: list) -> None:
        self.pid = pid
        self.spans = iter(spans)
        self.taken: list = []  # copied in and not yet given back

    def __iter__(self):
        return self

    def __next__(self):
        address, length = (int(x) for x in next(self.spans).split(":"))
        try:
            buffer = read_process_memory(self.pid, address, length, REMOTE_BUFFERS.take(length))
        except OSError as exc:
            raise RemoteReadError(f"could not copy {length} bytes out of the parent process: {exc}") from exc
        self.taken.append(buffer)
        return buffer

    def give_back(self, final: bool = True) -> None:
        """Hands the buffers taken so far back for reuse, those no object still
        uses; the others are tried again at the next call, unless ``final``."""
        taken, self.taken = self.taken, []
        in_use = REMOTE_BUFFERS.give_back(taken)
        if not final:
            self.taken = in_use


class TaskPipe(io.RawIOBase):
    """The task pipe, read through a BufferedReader that calls ``readinto``
    only when it has no bytes left. While ``idle`` (waiting for a frame):
    after a batch (``collect_when_idle``), it collects garbage once no frame
    has come for ``COLLECT_AFTER_SECONDS``; holding copy buffers, it gives
    them back after ``IDLE_SECONDS`` without one."""

    # Cyclic garbage a batch left that reached the older generations may not
    # be collected until well into the next batches: an idle worker must not
    # hold it (a cycle around a large array, say).
    COLLECT_AFTER_SECONDS = 0.5

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.idle = False
        self.collect_when_idle = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            try:
                return self._wait_and_read(buffer)
            except KeyboardInterrupt:
                # A SIGINT that comes while no task runs (a task's watchdog
                # firing late, say) has no one to interrupt: the worker waits on.
                # (Nothing was read: the signal cut the wait or the read short.)
                if not self.idle:
                    raise

    def _wait_and_read(self, buffer) -> int:
        if self.idle and self.collect_when_idle:
            ready, _, _ = select.select([self.fd], [], [], self.COLLECT_AFTER_SECONDS)
            if not ready:
                self.collect_when_idle = False
                if gc.isenabled():
                    gc.collect()
        if self.idle and REMOTE_BUFFERS.free and REMOTE_BUFFERS.IDLE_SECONDS is not None:
            ready, _, _ = select.select([self.fd], [], [], REMOTE_BUFFERS.IDLE_SECONDS)
            if not ready:
                REMOTE_BUFFERS.clear()
        return os.readv(self.fd, [buffer])


RemoteBuffers.UNKEPT_REFS = RemoteBuffers._unkept_refs()
REMOTE_BUFFERS = RemoteBuffers()


def child_pids() -> set:
    """This process's live children (of any of its threads)."""
    pids: set = set()
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(f.read().split())
    except OSError:
        pass
    return pids


def release_segment(mapping, view, buffers) -> bool:
    """Unmaps a batch's segment; False if a task kept a reference into it
    (then the mapping stays, and the parent must not reuse the segment)."""
    for b in buffers:
        # A buffer a task kept as it is: pickle hands a PickleBuffer over as
        # the buffer object itself. Released, it would fail in the task's
        # hands ("released memoryview"); as in RemoteBuffers.give_back, only
        # `buffers`, `b` and getrefcount's argument hold one that was not kept.
        if isinstance(b, memoryview) and sys.getrefcount(b) > RemoteBuffers.UNKEPT_REFS:
            return False
    try:
        for b in buffers:
            if isinstance(b, memoryview):
                b.release()
        view.release()
        if mapping is not None:
            mapping.close()
        return True
    except BufferError:
        return False


class SegmentWriter:
    """Writes the large out-of-band buffers of a reply to one segment."""

    def __init__(self, buffers: list):
        self.buffers = buffers

    def write(self, name: str) -> bytes:
        """Writes the buffers to a memfd (kept open in ``OPEN_RESULT_FDS`` until
        the parent has opened it as /proc/<pid>/fd/<n>: nothing is ever named in
        /dev/shm), or to the named file ``name`` where memfd is missing."""
        if not self.buffers:
            return b""
        spans, end = [], 0
        for b in self.buffers:
            off = (end + 63) // 64 * 64
            spans.append((off, b.nbytes))
            end = off + b.nbytes
        path = None
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("perfkit-result", os.MFD_CLOEXEC)
            label = f"memfd:{os.getpid()}:{fd}"
        else:
            path = os.path.join(shm_dir(), name)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            label = name
        try:
            os.ftruncate(fd, end)
            for b, (off, _) in zip(self.buffers, spans):
                view = b.cast("B") if b.format != "B" else b
                done = 0
                while done < view.nbytes:
                    done += os.pwrite(fd, view[done:], off + done)
        except BaseException:
            os.close(fd)
            if path:
                os.unlink(path)
            raise
        if path:
            os.close(fd)
        else:
            OPEN_RESULT_FDS.append(fd)
        return "\t".join([label] + [f"{o}:{n}" for o, n in spans]).encode()


# Result memfds of the last reply: the parent opens them, then sends a RELEASE
# frame (or its next batch), and they are closed when that frame arrives.
OPEN_RESULT_FDS: list = []
# Likewise the buffers of the last reply left in place for the parent to copy;
# and the copy buffers of its batch, handed back for reuse only then (a result
# that is a view of its argument holds one until the parent has copied it).
HELD_RESULTS: list = []
HELD_COPY_BUFFERS: list = []


def in_place_meta(buffers: list) -> bytes:
    """The meta of a reply whose buffers stay in this process (held in
    ``HELD_RESULTS`` until the parent has copied them): their addresses."""
    spans = []
    for b in buffers:
        address, length = buffer_address(b.cast("B") if b.format != "B" else b)
        spans.append(f"{address}:{length}")
    HELD_RESULTS.extend(buffers)
    return "\t".join([f"vm:{os.getpid()}"] + spans).encode()


def error_payload(kind: str, index: int, label: str | None, exc: BaseException) -> bytes:
    """An ERROR frame's payload; label None: the parent names the task."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        exc_bytes = dumps(exc)[0]  # cloudpickle where pickle cannot (a class of the caller's __main__)
        pickle.loads(exc_bytes)  # exceptions whose __init__ takes odd arguments don't come back
    except Exception:  # noqa: BLE001
        exc_bytes = None
    info = {
        "kind": kind,
        "task": index,
        "label": label,
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": tb,
        "exception": exc_bytes,
        "pid": os.getpid(),
    }
    return pickle.dumps(info, protocol=5)


def limit_threads_once(state: dict) -> None:
    """Applies the BLAS/OpenMP limits of this worker's environment (set by
    the parent: see perfkit.parallel._worker_env) with threadpoolctl to
    libraries already loaded; the variables themselves cover the ones loaded
    later."""
    default = os.environ.get("PERFKIT_INNER_THREADS")
    if not default or state.get("limited") == len(sys.modules):
        return
    state["limited"] = len(sys.modules)

    def first_limit(*names):
        for name in names:
            value = os.environ.get(name, "")
            if value.isdigit() and int(value) > 0:
                return int(value)
        return int(default)

    try:
        from threadpoolctl import threadpool_limits

        # By library, each from its own variable (a user's MKL_NUM_THREADS is MKL's).
        threadpool_limits(
            limits={
                "openmp": first_limit("OMP_NUM_THREADS"),
                "openblas": first_limit("OPENBLAS_NUM_THREADS"),
                "mkl": first_limit("MKL_NUM_THREADS"),
                "blis": first_limit("BLIS_NUM_THREADS"),
            }
        )
    except Exception:  # noqa: BLE001, S110
        pass


def take_parent_pythonpath() -> None:
    """The parent's own PYTHONPATH back in the environment
    (PERFKIT_PARENT_PYTHONPATH: ``=value``, or empty when it had none): the
    one this process started with only found perfkit."""
    parent = os.environ.pop("PERFKIT_PARENT_PYTHONPATH", None)
    if parent is not None:
        if parent.startswith("="):
            os.environ["PYTHONPATH"] = parent[1:]
        else:
            os.environ.pop("PYTHONPATH", None)


RUNNING = False  # True in a worker process, once main() runs (perfkit.memory asks)


def pool_room_wanted() -> bool:
    """Whether tasks start with room in pymalloc's pools (``_native``'s
    pool_room: a hot loop of ints or floats could otherwise run 20–40 %
    slower for good). Only under pymalloc itself; PERFKIT_POOL_ROOM=0 turns
    it off (to measure what it does)."""
    if os.environ.get("PERFKIT_POOL_ROOM", "1") == "0" or sys.flags.dev_mode:
        return False
    return os.environ.get("PYTHONMALLOC", "pymalloc") in ("", "pymalloc")


def main() -> int:
    global RUNNING
    RUNNING = True
    take_parent_pythonpath()
    # SIGINT keeps Python's own handling: a terminal's Ctrl-C never reaches a
    # worker (its own process group; the parent stops it), while a task may
    # rely on it (`_thread.interrupt_main()` as a watchdog), and an ignored
    # SIGINT would pass to every program a task starts.
    kill_group_when_parent_dies()  # a parent killed outright (by SIGTERM, say) cleans nothing up
    keep_pool_room(pool_room_wanted())
    # This file runs as __main__ (python -m): the caller's classes and
    # functions get a module of their own under that name (see
    # receive_main_definitions), and this one is `perfkit._worker` (an
    # import of that name in a task gets this module, not a second copy).
    sys.modules["perfkit._worker"] = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    for fd in (TASK_FD, REPLY_FD, STATUS_FD):
        os.set_inheritable(fd, False)  # subprocesses started by tasks must not hold our pipes
    # Nor may a process a task forks without exec (os.fork, multiprocessing's
    # fork): the parent learns of this worker's death by the end of its reply
    # pipe, which such a child would keep open for as long as it lives.
    os.register_at_fork(after_in_child=_leave_parents_pipes)
    status = memoryview(mmap.mmap(STATUS_FD, 8)).cast("q")
    pipe = TaskPipe(TASK_FD)
    tasks = io.BufferedReader(pipe, buffer_size=1 << 16)
    parent = os.getppid()
    threshold = int(os.environ.get("PERFKIT_MAX_NBYTES", str(64 * 1024)))
    functions: tuple = ()
    sent_main: dict = {}
    function_error: BaseException | None = None
    recording = None  # the caller's profiler's (builtins, clock) while it records the call
    thread_state: dict = {}

    def send(kind: int, call: int, batch: int, meta: bytes, payload: bytes) -> None:
        data = HEADER.pack(kind, len(meta), call, batch, len(payload)) + meta + payload
        view = memoryview(data)
        while view:
            view = view[os.write(REPLY_FD, view) :]

    while True:
        pipe.idle = True
        head = tasks.read(HEADER.size)
        pipe.idle = False
        if len(head) < HEADER.size:
            return 0  # the parent closed the pipe (or died): done
        kind, meta_len, call, batch, payload_len = HEADER.unpack(head)
        kind, frame_flags = kind & 0xFF, kind >> 8
        while OPEN_RESULT_FDS:
            os.close(OPEN_RESULT_FDS.pop())
        HELD_RESULTS.clear()
        while HELD_COPY_BUFFERS:
            HELD_COPY_BUFFERS.pop().give_back()
        meta = tasks.read(meta_len) if meta_len else b""
        payload = tasks.read(payload_len)
        if len(payload) < payload_len:
            return 0
        if kind == RELEASE:
            continue  # the parent has opened the last reply's results: closed above
        if kind == FUNCTION:
            recording = None
            try:
                argv, path, pickled, recording = pickle.loads(payload)
                # The caller's, as multiprocessing's and loky's workers have them;
                # the path before the functions, which may need it.
                sys.argv, sys.path[:] = argv, path
                functions, listed = pickle.loads(pickled)
                sent_main, function_error = receive_main_definitions(listed), None
            except BaseException as exc:  # reported with each batch of this call  # noqa: BLE001
                functions, sent_main, function_error = (), {}, exc
            limit_threads_once(thread_state)
            continue
        if kind != BATCH:
            return 3
        segment = None
        if meta:
            try:
                segment = map_segment(meta)
            except BaseException as exc:  # noqa: BLE001
                send(ERROR, call, batch, b"", error_payload("unpickle", -1, "the batch's shared memory", exc))
                continue
        remote = segment[2] if segment is not None and isinstance(segment[2], RemoteSpans) else None
        mapped = segment is not None and remote is None
        children = child_pids() if mapped else None
        # Batches run with CPython's own collection thresholds, as joblib's
        # workers do: putting young collections off (as the caller does while
        # it dispatches) made a worker whose tasks leave cycles around arrays
        # hold 4x the memory, for ~5 % on the pandas groupby (helper-40).
        session = start_recording(recording) if recording is not None else None
        kind, reply_meta, reply = run_batch(
            payload,
            segment,
            functions,
            function_error,
            status,
            parent,
            threshold,
            # Not when the arguments came in a segment: results that are views of
            # it would then keep the parent from reusing it.
            bool(frame_flags & RESULTS_IN_PLACE) and not mapped,
            sent_main,
        )
        if session is not None:
            tree = stop_recording(session)
            if tree is not None:
                reply = with_worker_tree(reply, tree)
            session = tree = None
        del payload
        flags = 0
        if mapped and not release_segment(*segment):
            flags = SEGMENT_RETAINED
        elif mapped and child_pids() - children:
            # A task forked: the child maps the segment too, and would see the
            # parent rewrite it for a later batch.
            flags = SEGMENT_RETAINED
        if remote is not None:
            if HELD_RESULTS:
                HELD_COPY_BUFFERS.append(remote)
            else:
                remote.give_back()
        remote = None
        segment = None
        send(kind | flags << 8, call, batch, reply_meta, reply)
        pipe.collect_when_idle = True


# What a recorded batch's tree leaves out as the worker's own: this loop
# and the native functions that run the tasks. Left in: unpickling the
# batch, the tasks, pickling their results (perfkit._pool_common's
# reducers among it), which are the batch's cost here.
_OWN_FILES = [__file__, os.path.abspath(__file__)]
_OWN_BUILTINS = [
    f"<built-in method perfkit._native.{function.__name__}>" for function in (run_tasks, run_packed)
]


def start_recording(recording):
    """A profiler recording this batch with the caller's (builtins, clock),
    or None when one cannot start here. It yields: a profiler a task starts
    (perfkit's, cProfile, sys.setprofile) stops it and records from there."""
    builtins, clock = recording
    me = threading.get_ident()
    try:
        session = _native.Session(
            builtins=builtins,
            clock=clock,
            hidden_files=_OWN_FILES,
            hidden_builtins=_OWN_BUILTINS,
            yields=True,
        )
        # This worker's own threads are not its tasks'; the ones tasks start are.
        session.enable([t.ident for t in threading.enumerate() if t.ident is not None and t.ident != me])
    except Exception:  # noqa: BLE001 - the batch then runs unrecorded
        return None
    return session


def stop_recording(session):
    """The batch's call tree, as bytes for the caller (None if it cannot be had)."""
    try:
        session.disable()
        return session.tree_bytes()
    except Exception:  # noqa: BLE001 - the batch's results still go back
        return None


def _leave_parents_pipes() -> None:
    """In a child a task forked: the three descriptors become /dev/null (not
    closed, so that no file of the child's can take their numbers and be
    written to as a pipe). A child that returns into this module's loop then
    reads an end of file and exits; what it would send goes nowhere."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (TASK_FD, REPLY_FD, STATUS_FD):
            os.dup2(null, fd, inheritable=False)
        os.close(null)
    except OSError:
        pass  # (out of descriptors: the child keeps them, as before)


_reply_count = [0]


def run_batch(
    payload, segment, functions, function_error, status, parent, threshold, in_place=False, sent_main=None
):
    """Runs one batch; returns (frame kind, meta, payload) of the reply. A
    function of its own so that every reference into the batch's segment is
    gone when it returns."""
    first, mode, items = -1, ARGS_ONLY, []  # -1: the parent's own first index of the batch
    t0 = time.perf_counter()
    try:
        try:
            first, mode, items = pickle.loads(payload, buffers=segment[2] if segment else None)
        except Exception:
            # The arguments may name what the call's functions brought of the
            # caller's __main__: their failure is the one to report, not the
            # "Can't get attribute" it leads to here.
            if function_error is None:
                raise
            raise function_error from None
        if function_error is not None:
            raise function_error
        loaded = time.perf_counter() - t0
    except RemoteReadError as exc:
        return (
            ERROR,
            b"",
            error_payload("shared_memory", first, "the batch's buffers in the caller's memory", exc),
        )
    except BaseException as exc:  # noqa: BLE001
        return ERROR, b"", error_payload("unpickle", first, "the batch's functions or arguments", exc)
    try:
        if mode == SINGLE_PACKED:
            results, failed, exc = run_packed(functions[0], items[0], items[1], status, first)
        elif mode == STREAMED:
            mode, blobs = items
            results, failed, exc, items = run_streamed(functions, mode, blobs, segment, status, first)
            if failed is not None and items is None:
                # The parent names the task (label None): its arguments are what failed here.
                kind = "shared_memory" if isinstance(exc, RemoteReadError) else "unpickle"
                return ERROR, b"", error_payload(kind, failed, None, exc)
        else:
            results, failed, exc = run_tasks(functions, mode, items, status, first)
    except BaseException as exc:  # noqa: BLE001
        return ERROR, b"", error_payload("unpickle", first, "the batch's arguments", exc)
    if failed is not None:
        if mode == SINGLE_PACKED:
            mode, items = SINGLE, unpack_values(*items)
        return (
            ERROR,
            b"",
            error_payload("raised", failed, _label(functions, mode, items[failed - first]), exc),
        )
    # (The time to unpickle the batch apart: a large object every task gets is
    # unpickled once a batch, and the parent does not count it as the tasks'.)
    elapsed = (time.perf_counter() - t0, loaded)
    try:
        # Plain ints or floats, or numpy scalars of one type, travel packed (no pickle opcodes).
        packed = (
            results if isinstance(results, tuple) else pack_values(results) or pack_numpy_scalars(results)
        )
        if packed is not None:
            out, buffers = pickle.dumps((elapsed, packed[0], packed[1]), protocol=5), []
        else:
            out, buffers = dumps((elapsed, None, results), threshold, MainNames(sent_main or {}))
    except BaseException as exc:  # noqa: BLE001
        # Name the first result that can't be pickled.
        bad = next((i for i, r in enumerate(results) if not _picklable(r)), 0)
        if mode == SINGLE_PACKED:
            mode, items = SINGLE, unpack_values(*items)
        return (
            ERROR,
            b"",
            error_payload(
                "unpicklable_result",
                first + bad,
                None if items is None else _label(functions, mode, items[bad]),  # None: STREAMED
                exc,
            ),
        )
    _reply_count[0] += 1
    try:
        if in_place and buffers:
            return RESULT, in_place_meta(buffers), out
        seg_meta = SegmentWriter(buffers).write(f"perfkit-{parent}-r{os.getpid()}-{_reply_count[0]}")
    except BaseException as exc:  # noqa: BLE001
        return ERROR, b"", error_payload("shared_memory", first, "the batch's results", exc)
    return RESULT, seg_meta, out


def run_streamed(functions, mode, blobs, segment, status, first):
    """Runs a STREAMED batch: each task's arguments are unpickled just before
    it runs (so its large buffers are copied in then), and the buffers no
    object kept are reused for the next task. Returns (results, index of the
    failed task or None, its exception, and {its position: its item}, or None
    when its arguments could not be unpickled)."""
    remote = segment[2] if segment is not None and isinstance(segment[2], RemoteSpans) else None
    # One iterator for the whole batch: each task's pickle draws its own buffers from it.
    buffers = remote if remote is not None else iter(segment[2]) if segment is not None else None
    results: list = []
    for position, blob in enumerate(blobs):
        index = first + position
        status[0] = index
        try:
            item = pickle.loads(blob, buffers=buffers)
        except BaseException as exc:  # noqa: BLE001
            return results, index, exc, None  # the caller tells a RemoteReadError from the rest
        done, failed, exc = run_tasks(functions, mode, [item], status, index)
        if failed is not None:
            return results, failed, exc, {position: item}
        results += done
        del item, done
        if remote is not None:
            # Not final: a buffer a result views may come free once the parent has copied it.
            remote.give_back(final=False)
    return results, None, None, None


def receive_main_definitions(sent_main) -> dict:
    """Puts the classes and functions of the caller's __main__ that a call's
    batches name (``[(name, object), ...]``, with its functions) in the
    module that stands for __main__ here (see perfkit._pool_common.MainNames);
    returns them by name: the call's results may name those, and no others."""
    sent = dict(sent_main)
    main = sys.modules["__main__"]
    for name, obj in sent.items():
        setattr(main, name, obj)
    return sent


def _label(functions, mode, item) -> str:
    if mode == FULL:
        return task_label(functions[item[0]], item[1], item[2])
    return task_label(functions[0], (item,) if mode == SINGLE else item)


def _picklable(obj) -> bool:
    try:
        dumps(obj)
        return True
    except Exception:  # noqa: BLE001
        return False


if __name__ == "__main__":
    sys.exit(main())
