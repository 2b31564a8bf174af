"""perfkit.Parallel's dask backend on a dask worker: a batch's tasks, and,
while the caller's profiler records the call, their calls for its profile.

A dask worker runs several batches at once (one per thread of its pool), and
a process has one perfkit recording at a time. So one recording serves every
batch that a recording caller sends: a yielding Session, as a processes
worker's (see perfkit._worker.start_recording: a task's own profiler takes
over from it), started by the first such batch and stopped when the last
batch running under it ends (a worker records only while it runs batches of
a recorded call). It records the worker's threads; each batch takes out of
it what its own thread recorded below the batch (Session.take_calls_below)
and sends that with its results, for the caller to adopt
(_native.adopt_dask_tree). This module's functions are the worker's own:
left out of the trees, whose top-level calls are the tasks.
"""

from __future__ import annotations

import os
import threading
import uuid

from perfkit import _native

# This process, as a batch's caller names it: a batch that a dask worker
# runs in its caller's own process (a LocalCluster(processes=False)) records
# nothing, as the caller's profiler records that worker's threads itself.
PROCESS_TOKEN = uuid.uuid4().hex


def _new_process_token() -> None:
    global PROCESS_TOKEN
    PROCESS_TOKEN = uuid.uuid4().hex


os.register_at_fork(after_in_child=_new_process_token)

# What a batch's tree leaves out as the worker's own: this module (the
# loop that calls the tasks).
_OWN_FILES = [__file__, os.path.abspath(__file__)]


class _Shared:
    """The recording the batches running here record under: `recording`, the
    caller's (builtins, clock); `batches`, how many run under it now."""

    def __init__(self, session, recording):
        self.session = session
        self.recording = recording
        self.batches = 0


_lock = threading.Lock()
_current: _Shared | None = None
# Recordings started in this process (read by the tests).
started = 0


def run(chunk, recording, name):
    """Runs a batch's tasks, recording them for the caller when `recording`
    (its profiler's (builtins, clock)) is not None: ``(results of the tasks
    done, (index, task, exception) of the task that raised or None, the
    tree of their calls or None)``. `name`: the tree's thread's."""
    shared = _join(recording) if recording is not None else None
    if shared is None:
        results, failed = _run(chunk)
        return results, failed, None
    try:
        return _run_recorded(shared.session, chunk, name)
    finally:
        _leave(shared)


def _run_recorded(session, chunk, name):
    # This call was entered while the session recorded: the batch's calls are below it.
    mark = session.mark_current_call()
    results, failed = _run(chunk)
    tree = None
    if mark is not None:
        try:
            tree = session.take_calls_below(mark, name)
        except Exception:  # noqa: BLE001, S110 - the batch's results still go back
            pass
    return results, failed, tree


def _run(chunk):
    results = []
    for index, task in chunk:
        try:
            function, args, kwargs = task
            # (not results.append: a C call, which a tree would show beside the tasks)
            results += (function(*args, **kwargs),)
        except BaseException as exc:  # noqa: BLE001 - the caller raises it
            return results, (index, task, exc)
    return results, None


def _join(recording):
    """The recording for a batch of a caller recording with `recording`,
    started now if none runs; None when none can record (then the batch runs
    unrecorded)."""
    global _current, started
    with _lock:
        shared = _current
        if shared is not None and shared.recording != recording:
            # A caller recording in another mode or on another clock: its
            # recording replaces that one (the batches still running under it
            # take what it recorded until now).
            shared.session.disable()
            _current = shared = None
        if shared is None:
            session = _start(recording)
            if session is None:
                return None
            _current = shared = _Shared(session, recording)
            started += 1
        elif not shared.session.enabled:
            # It gave way to a profiler a task started: not again while the
            # batches that ran under it run (that profiler may still be on).
            return None
        shared.batches += 1
        return shared


def _leave(shared):
    global _current
    with _lock:
        shared.batches -= 1
        if shared.batches == 0:
            shared.session.disable()
            if _current is shared:
                _current = None


def _start(recording):
    builtins, clock = recording
    try:
        # workers=False: a Parallel call inside a task does not record in its
        # workers (what they sent would stay in this session, never taken).
        session = _native.Session(
            builtins=builtins, clock=clock, hidden_files=_OWN_FILES, yields=True, workers=False
        )
        session.enable(_threads_left_out())
    except Exception:  # noqa: BLE001 - another profiler records here: the batch runs unrecorded
        return None
    return session


def _threads_left_out():
    """The dask worker's own threads (its event loop, say), which run no
    task: those of its task pools are recorded, as are the threads started
    from now on."""
    me = threading.get_ident()
    try:
        from distributed import get_worker

        pools = set()
        for executor in get_worker().executors.values():
            pools.update(thread.ident for thread in getattr(executor, "_threads", ()))
    except Exception:  # noqa: BLE001 - not in a dask worker (called directly): none left out
        return []
    return [
        thread.ident
        for thread in threading.enumerate()
        if thread.ident is not None and thread.ident != me and thread.ident not in pools
    ]
