"""perfkit.Parallel's ``dask`` backend: one call's tasks, in batches, on an
existing dask.distributed ``Client``.

Owns what a call does on a cluster: batch sizing by the workers' measured
time and the bytes a batch carries, a window of batches in flight
(``pre_dispatch``), sending a large argument once (scattered, as joblib's
dask backend does) and again when the worker holding it is lost, timeouts,
fail-fast cancelling, clear errors, and nested calls inside tasks. It must
not start or close clusters or Clients (the user's), and keeps nothing on
the cluster after a call but what ``parallel_config(scatter=...)`` asked for.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import time
import typing
import uuid
import weakref

from perfkit import _dask_worker, _native
from perfkit import parallel as pp
from perfkit._pool_common import task_label

# A batch is about this much of a worker's time: dask costs ~1 ms of the
# scheduler's per task, and a round trip over the network.
TARGET_BATCH_SECONDS = 0.1
# Batches shrink towards a call's end (every worker busy to the last), to no less than this.
MIN_TAIL_BATCH_SECONDS = 0.01
# An argument this large that a later batch carries again is scattered, sent once.
SCATTER_FROM_BYTES = 64 << 10
# An argument over dask's "large graph" warning threshold (10 MB) is scattered
# at once: dask warns of task graphs that carry that much (the scheduler would
# hold it). Smaller ones travel in their batch, which dask sends on without
# holding up this process, and can rerun elsewhere if its worker dies; a
# batch carries at most MAX_BATCH_BYTES of them (below that threshold).
MAX_BATCH_BYTES = 8 << 20
# A batch whose scattered data was lost with its worker is sent again (with
# its arguments) at most this many times; dask's own retries for a batch
# that kills its worker are its `allowed-failures`.
RESUBMITS = 3
# Argument types never worth sizing or scattering (small).
_PLAIN = (int, float, complex, bool, type(None))
# How long a call waits for a cluster without workers to get one, as joblib's
# dask backend does (its default, and its parameter's name).
WAIT_FOR_WORKERS_SECONDS = 10
# parallel_config(backend="dask", ...)'s keywords: perfkit's own, and those of
# client.submit that joblib's dask backend passes on to each batch.
OWN_PARAMS = ("client", "scatter", "wait_for_workers_timeout")
SUBMIT_PARAMS = ("workers", "resources", "retries", "priority", "fifo_timeout", "allow_other_workers")


def check_params(params):
    """Raises for a parallel_config(backend="dask", ...) keyword the backend
    does not take, which would otherwise be silently ignored."""
    if "scheduler_host" in params or "loop" in params:
        raise ValueError(
            "parallel_config(backend='dask'): scheduler_host= and loop= (joblib's) are not taken: "
            "perfkit uses the Client you make and close, "
            "parallel_config(backend='dask', client=Client('tcp://host:8786'))"
        )
    unknown = sorted(set(params) - set(OWN_PARAMS) - set(SUBMIT_PARAMS))
    if unknown:
        raise ValueError(
            f"parallel_config(backend='dask'): unknown keyword(s) {', '.join(unknown)}; it takes "
            f"{', '.join(OWN_PARAMS)}, and client.submit's {', '.join(SUBMIT_PARAMS)}"
        )
    retries = params.get("retries")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        # (the call counts them itself: a str failed mid-call, comparing it with a count)
        raise ValueError(f"retries={retries!r}: a whole number of runs again (0 or more), or None")
    wait = params.get("wait_for_workers_timeout")
    if wait is not None and (isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0):
        raise ValueError(
            f"wait_for_workers_timeout={wait!r}: seconds (a number, 0 or more), or None not to wait"
        )


class GivenData:
    """``parallel_config(backend="dask", scatter=[...])``'s objects: sent to
    every worker at the first call on a Client, and reused by the later
    calls inside that configuration (as joblib's are)."""

    def __init__(self, values):
        if not isinstance(values, (list, tuple)):
            raise TypeError(
                f"parallel_config(scatter=...) takes a list or a tuple, not {type(values).__name__}"
            )
        self.values = list(values)
        # client.id -> (client, its futures of self.values); a closed client's
        # entry goes at the next lookup (its futures would keep it alive).
        self._futures = {}

    def futures(self, client):
        for key, (other, _) in list(self._futures.items()):
            if other.status == "closed":
                del self._futures[key]
        known = self._futures.get(client.id)
        if known is None or any(f.status != "finished" for f in known[1]):
            known = self._futures[client.id] = (
                client,
                client.scatter(self.values, broadcast=True, hash=False),
            )
        return known[1]


class DaskCall:
    def __init__(self, parallel, client, iterable, total, progress):
        self.parallel = parallel
        self.client = client
        self.iterable = iterable
        self.total = total
        self.progress = progress
        from distributed.comm import get_address_host

        params = parallel._setting("backend_params", {})
        # Every worker's threads: client.nthreads(), not scheduler_info(),
        # which lists only the first 5 workers in distributed 2025.4-2026.6.
        threads = client.nthreads() or _wait_for_workers(
            client, params.get("wait_for_workers_timeout", WAIT_FOR_WORKERS_SECONDS), parallel.timeout
        )
        self.submit_params = {k: v for k, v in params.items() if k in SUBMIT_PARAMS}
        # dask's retries would never apply to a task's error (the batch
        # returns it): the call sends a failed batch again itself.
        self.retries = self.submit_params.pop("retries", None) or 0
        self.workers = max(1, sum(threads.values()))
        # Worker threads per host: a Parallel inside a task shares its machine with all of them.
        self.host_threads = {}
        for address, n in threads.items():
            host = get_address_host(address)
            self.host_threads[host] = self.host_threads.get(host, 0) + n
        self.addresses = sorted(threads)
        self.window = pp._dispatch_window(parallel.pre_dispatch, self.workers)
        self.at_once = _large_graph_bytes()
        self.max_batch_bytes = min(MAX_BATCH_BYTES, self.at_once * 3 // 4)
        self.ordered = parallel.return_as != "generator_unordered"
        # Finished futures, as dask's as_completed tracks them (on the client's
        # event loop; not done-callbacks, which dask runs on a thread pool
        # that is gone at the interpreter's exit, where a call left
        # unfinished would print a traceback for each).
        from distributed import as_completed

        self.completed = as_completed(loop=client.loop)
        self.done = self.completed.queue
        self.batches = itertools.count()
        # id(argument) -> [weak reference, batch first met in, its size, or
        # None while its scatter is under way, or its future once scattered]:
        # weak, so that a generator's arguments
        # (and their data on the cluster) go when their batches are done.
        # Only weak-referenceable arguments of SCATTER_FROM_BYTES or more are entered.
        self.known = {}
        # future key -> (first index, tasks as drawn, future, Sends, whether it uses scattered data)
        self.in_flight = {}
        # future key of a batch sent again by retries= from its failed task
        # -> (first index, tasks before that one, their results): those ran
        # once and are not run again, as dask's retries rerun only the task that failed.
        self.done_before = {}
        self.given = params.get("scatter")

    def run(self):
        size = self.parallel.batch_size
        auto = size == "auto"
        if auto:
            size = 1  # until a batch has been timed
        costs = pp._RecentCosts()
        in_flight = self.in_flight
        in_order = pp._InOrder()
        tasks = enumerate(self.iterable)
        dispatched = 0
        exhausted = False
        completed = False
        started_call = False
        seceded = False
        if self.given is not None:
            self._know_given()
        try:
            while True:
                while not exhausted and len(in_flight) < self.window:
                    count = self._submit(tasks, size, auto, Sends())
                    if not count:
                        exhausted = True
                        break
                    dispatched += count
                    self.parallel.n_dispatched_tasks = dispatched
                if not started_call:
                    started_call = True
                    yield pp._STARTED
                if not in_flight:
                    break
                if not seceded:
                    seceded = _secede()  # a task waiting for tasks must not hold its worker's thread
                try:
                    future = self.done.get(timeout=self.parallel.timeout)
                except queue.Empty:
                    self._timeout()
                entry = in_flight.get(future.key)
                if entry is None:
                    continue
                first, chunk, _, sends, scattered = entry
                if self.client.status in ("closing", "closed"):
                    # Not future.result(): dask's call into a Client's event loop
                    # can wait forever when the loop stops while the Client closes.
                    _raise_cut_off(None, _CLOSED, first, chunk)
                try:
                    elapsed, results, tree = future.result()  # a task's error is raised here
                except Exception as exc:
                    cut_off = _client_cut_off(self.client, exc)
                    if cut_off is not None:
                        # Nothing can be sent again: say so, not dask's bare "cancelled for reason: unknown".
                        _raise_cut_off(exc, cut_off, first, chunk)
                    # Cancelled by dask (not raised by a task): data scattered for it
                    # went with its worker, and dask cannot recompute scattered data.
                    lost = scattered and future.status == "cancelled"
                    if lost and sends.lost < RESUBMITS:
                        del in_flight[future.key]
                        self._resend(chunk, sends.after_loss(), self.done_before.pop(future.key, None))
                        continue
                    if _is_unsendable_result(exc):
                        self._raise_unsendable(exc, first, chunk)
                    if future.status == "finished":
                        # (the batch ran and its results reached this process: they did not load here)
                        pp._add_note(
                            exc,
                            f"perfkit.Parallel: the results of {pp._tasks_text(first, len(chunk))} came back "
                            "from a dask worker but could not be taken in here",
                        )
                        raise
                    if lost or _is_killed_worker(exc):
                        pp._add_note(exc, _died_note(first, chunk, sends.lost + 1 if lost else None))
                    raise  # (its future stays in flight, so that `finally` releases it: dask
                    # keeps the exception, whose traceback holds this frame, which holds the future)
                if tree is not None:
                    # (a batch recorded for this process's profiler: its tasks' calls; a
                    # failed batch's too, up to its error)
                    _native.adopt_dask_tree(tree)
                    tree = None
                if type(results) is TaskRaised:
                    if sends.retried < self.retries:
                        del in_flight[future.key]
                        ran = len(results.done)
                        before = self.done_before.pop(future.key, None) or (first, [], [])
                        before = (before[0], before[1] + chunk[:ran], before[2] + results.done)
                        self._submit(iter(chunk[ran:]), len(chunk) - ran, False, sends.after_retry(), before)
                        continue
                    results.raise_here(first, chunk)  # (its future stays in flight, as above)
                del in_flight[future.key]
                if auto:
                    per_task = costs.add(max(elapsed, 1e-7) / max(len(chunk), 1))
                    left = (
                        self.total - dispatched if self.total is not None else pp._tasks_left(self.iterable)
                    )
                    size = pp._share_batch_size(
                        per_task, left, self.workers, TARGET_BATCH_SECONDS, MIN_TAIL_BATCH_SECONDS, 100_000
                    )
                before = self.done_before.pop(future.key, None)
                if before is not None:
                    first, chunk, results = before[0], before[1] + chunk, before[2] + results
                self.progress.update(len(chunk))
                if self.ordered:
                    yield from in_order.add(first, results)
                else:
                    yield results
            completed = True
        finally:
            # Fail fast (an error, a timeout, a closed generator, Ctrl-C):
            # queued batches are dropped; one already running runs to its end.
            # Not on a Client closed or cut off from its scheduler: it holds no
            # futures any more, and a call into one closing can wait forever
            # (its event loop stops with the call's callback unrun).
            if not completed and in_flight and self.client.status == "running":
                self.client.cancel([entry[2] for entry in in_flight.values()])
            in_flight.clear()
            self.done_before.clear()
            self.known.clear()  # the scattered futures go now (their weak references' callbacks form cycles)
            if seceded:
                _rejoin()
            self.progress.close(completed)

    def _know_given(self):
        for value, future in zip(self.given.values, self.given.futures(self.client)):
            # (the configuration holds it: a plain callable stands in for a weak reference)
            self.known[id(value)] = [lambda value=value: value, -1, future]

    def _submit(self, tasks, size, auto, sends, before=None):
        """Draws a batch of at most `size` tasks from `tasks` (`(index,
        task)` pairs) and sends it; the count sent (0: none left). `sends`:
        why its tasks were sent before; `before`: what self.done_before keeps for it."""
        batch = next(self.batches)
        chunk, prepared, scattered = self._prepared(tasks, size, auto, batch)
        if not chunk:
            return 0
        function = prepared[0][1][0]
        key = f"perfkit.Parallel-{task_label(function, limit=0).rstrip('()')}-{uuid.uuid4().hex}"
        try:
            future = self.client.submit(
                run_chunk,
                prepared,
                self.host_threads,
                self.retries > 0,
                _recording_for(),
                key=key,
                pure=False,
                **self.submit_params,
            )
        except Exception:
            # dask could not serialize the batch ("Could not serialize object of
            # type LLGExpr"): name the task; anything else as dask raised it.
            self._check_client()
            self._check_tasks_picklable(chunk)
            raise
        self.completed.add(future)
        if before is not None:
            self.done_before[future.key] = before
        self.in_flight[future.key] = (chunk[0][0], chunk, future, sends, scattered)
        return len(chunk)

    def _resend(self, chunk, sends, before):
        # Its scattered copies are forgotten, and the batch goes again with its
        # arguments (they are scattered afresh where they are large).
        for index, task in chunk:
            _, args, kwargs = pp._unpack(task, index)
            for value in itertools.chain(args, kwargs.values()):
                entry = self.known.get(id(value))
                if entry is not None and entry[1] != -1 and entry[0]() is value:
                    del self.known[id(value)]
        self._check_client()
        if self.given is not None:
            self._know_given()  # sent again if lost
        self.addresses = sorted(self.client.nthreads())
        self._submit(iter(chunk), len(chunk), False, sends, before)

    def _prepared(self, tasks, size, auto, batch):
        """Draws up to `size` tasks: (the tasks as drawn, the tasks to send,
        whether they use scattered data). dask hands a task the value of a
        future. Scattered, all of a batch's in one round trip to one worker
        (where the scheduler then runs the batch): an argument over dask's
        large-graph threshold at once; one over SCATTER_FROM_BYTES once an
        earlier batch carried it too (then it is sent once, not with every
        batch); and a batch's largest ones while it would carry more than
        max_batch_bytes, when it is close to the threshold (an `auto` batch
        stops drawing at max_batch_bytes instead)."""
        chunk, drawn, values, sizes, fresh = [], [], {}, {}, {}
        nbytes = 0
        for index, task in itertools.islice(tasks, size):
            unpacked = pp._unpack(task, index)
            for value in itertools.chain(unpacked[1], unpacked[2].values()):
                if type(value) not in _PLAIN and id(value) not in values:
                    values[id(value)] = value
                    sizes[id(value)] = self._note(value, batch, fresh)
                    nbytes += sizes[id(value)]
            chunk.append((index, task))
            drawn.append(unpacked)
            if auto and nbytes >= self.max_batch_bytes:
                break
        if nbytes > self.at_once * 9 // 10:
            # (one array a little over max_batch_bytes still travels in its batch)
            for key in sorted(sizes, key=sizes.get, reverse=True):
                if nbytes <= self.max_batch_bytes or sizes[key] < SCATTER_FROM_BYTES:
                    break
                fresh[key] = values[key]
                nbytes -= sizes[key]
        futures = self._scatter(fresh, batch, chunk) if fresh else {}
        scattered = bool(futures)
        out = []
        for (index, task), (function, args, kwargs) in zip(chunk, drawn):
            new_args = tuple(self._sent_as(v, futures) for v in args)
            new_kwargs = {k: self._sent_as(v, futures) for k, v in kwargs.items()}
            same = all(a is b for a, b in zip(new_args, args)) and all(
                new_kwargs[k] is v for k, v in kwargs.items()
            )
            scattered = scattered or not same
            out.append((index, task if same else (function, new_args, new_kwargs)))
        return chunk, out, scattered

    def _scatter(self, fresh, batch, chunk):
        """Scatters `fresh` (id -> value): {id: future}."""
        values = list(fresh.values())
        where = [self.addresses[batch % len(self.addresses)]] if self.addresses else None
        try:
            futures = self.client.scatter(values, workers=where, hash=False)
        except Exception:
            self._check_client()
            self._check_tasks_picklable(chunk)
            if where is None or self.client.status != "running":
                raise  # (not again to a Client waiting for its scheduler: it would wait its timeout again)
            self.addresses = []  # that worker left the cluster: let dask place the data
            futures = self.client.scatter(values, hash=False)
        out = {}
        for value, future in zip(values, futures):
            out[id(value)] = future
            entry = self.known.get(id(value))
            if entry is not None and entry[0]() is value:
                entry[2] = future
        return out

    def _note(self, value, batch, fresh):
        """The bytes `value` adds to this batch (0 when it is scattered);
        marks it in `fresh` to be scattered when it should be."""
        entry = self.known.get(id(value))
        if entry is not None and entry[0]() is value:
            if not isinstance(entry[2], int):
                return 0  # scattered already
            if entry[1] == batch:
                return entry[2]
            fresh[id(value)] = value  # a second batch carries it: send it once from now on
            return 0
        from dask.sizeof import sizeof

        size = sizeof(value)
        if size < SCATTER_FROM_BYTES:
            return size
        if size > self.at_once:
            fresh[id(value)] = value
            size = 0
        known, key = self.known, id(value)

        def forget(ref):
            if known.get(key, (None,))[0] is ref:
                del known[key]  # and with it the future: the cluster may drop the data

        try:
            self.known[key] = [weakref.ref(value, forget), batch, size or None]
        except TypeError:
            pass  # not weak-referenceable (a tuple, bytes): scattered for this batch only
        return size

    def _sent_as(self, value, futures):
        future = futures.get(id(value))
        if future is not None:
            return future
        entry = self.known.get(id(value))
        if (
            entry is not None
            and not isinstance(entry[2], int)
            and entry[2] is not None
            and entry[0]() is value
        ):
            return entry[2]
        return value

    def _check_client(self):
        """Raises dask's ClosedClientError, saying so, when the Client was
        closed during the call (dask's own calls on it fail with
        "'NoneType' object has no attribute 'scatter'" and the like)."""
        if self.client.status in ("closing", "closed"):
            from distributed.client import ClosedClientError

            raise ClosedClientError(f"perfkit.Parallel: the dask Client {_CLOSED} during the call")

    def _raise_unsendable(self, exc, first, chunk):
        """dask's error for a batch whose results its worker could not pickle
        (a TypeError with the worker's traceback as text), as the processes
        backend names that: UnpicklableError, naming the tasks."""
        label = task_label(*pp._unpack(chunk[0][1], first))
        which = (
            f"the result of task {first} ({label})"
            if len(chunk) == 1
            else f"the results of {pp._tasks_text(first, len(chunk))} (the first: {label})"
        )
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise pp.UnpicklableError(
            f"perfkit.Parallel: {which} could not be pickled on the dask worker to send "
            f"{'it' if len(chunk) == 1 else 'them'} back: {lines[-1].strip()}"
        ) from exc

    def _check_tasks_picklable(self, chunk):
        """Raises UnpicklableError naming the first task of `chunk` that cannot be pickled."""
        import cloudpickle

        for index, task in chunk:
            task = pp._unpack(task, index)
            pp._check_picklable(index, task, task, cloudpickle.dumps, "", "it to the dask cluster")

    def _timeout(self):
        firsts = sorted((entry[0], len(entry[1])) for entry in self.in_flight.values())
        what = ", ".join(pp._tasks_text(a, n) for a, n in firsts[:5])
        if len(firsts) > 5:
            what += ", …"
        raise pp.ParallelTimeoutError(
            f"perfkit.Parallel: {what} did not finish within timeout={self.parallel.timeout} s on the "
            "dask cluster; they were cancelled (a task already running there runs to its end)"
        )


class Sends(typing.NamedTuple):
    """How often a batch's tasks were sent again, for each of the two reasons,
    each with its own limit: their scattered data lost with a worker
    (RESUBMITS), a task's error (retries=)."""

    lost: int = 0
    retried: int = 0

    def after_loss(self):
        return self._replace(lost=self.lost + 1)

    def after_retry(self):
        return self._replace(retried=self.retried + 1)


def _died_note(first, chunk, times_lost):
    label = task_label(*pp._unpack(chunk[0][1], first))
    which = (
        f"task {first} ({label}) was"
        if len(chunk) == 1
        else f"{pp._tasks_text(first, len(chunk))} (the first: {label}) were"
    )
    if times_lost is None:
        # (running there, queued there, or done there before the news reached the scheduler:
        # dask fails them all)
        return f"perfkit.Parallel: {which} given to a dask worker that died"
    return (
        f"perfkit.Parallel: {which} sent {times_lost} times, and each time the worker holding the "
        "data scattered for them died (a task that kills its worker does that)"
    )


def _client_cut_off(client, exc):
    """What the Client did when it, not the scheduler, ended a future of the
    call (words for a message): closed, cut off from its scheduler, or
    restarted; None otherwise."""
    if client.status in ("closing", "closed"):
        return _CLOSED
    reason = getattr(exc, "reason", None)  # (dask's FutureCancelledError's)
    if reason == "scheduler-restart":
        return "was restarted (its workers and the call's tasks with them)"
    if reason == "scheduler-connection-lost" or client.status != "running":
        return "lost its scheduler"
    return None


_CLOSED = "was closed"


def _raise_cut_off(exc, what, first, chunk):
    label = task_label(*pp._unpack(chunk[0][1], first))
    message = (
        f"perfkit.Parallel: the dask Client {what} during the call; "
        f"{pp._tasks_text(first, len(chunk))} ({label}) and any others still on the cluster did not finish"
    )
    from distributed.client import ClosedClientError, FutureCancelledError

    # (in the message, not a note, which Python before 3.11 does not show; and
    # without dask's own error: a closed Client's is "IOLoop is closed" or a
    # future "cancelled for reason: unknown", whichever its closing reached first)
    if what is _CLOSED:
        raise ClosedClientError(message) from None
    if isinstance(exc, FutureCancelledError):
        raise FutureCancelledError(key=exc.key, reason=exc.reason, msg=message) from None
    pp._add_note(exc, message)
    raise exc


def _wait_for_workers(client, seconds, call_timeout):
    """Waits up to `seconds` for the cluster's first worker (an adaptive
    cluster starts one for a task waiting), as joblib's dask backend does:
    a call on a cluster without workers would otherwise wait forever. The
    workers' threads then, or {} when `seconds` is 0 or None (no wait).
    Never longer than the call's `timeout=` (ParallelTimeoutError then, as
    when its tasks wait on a cluster without workers with no wait)."""
    if not seconds:
        return {}
    call_runs_out = call_timeout is not None and call_timeout < seconds
    probe = client.submit(_probe, key=f"perfkit.Parallel-wait-for-workers-{uuid.uuid4().hex}", pure=False)
    try:
        probe.result(timeout=call_timeout if call_runs_out else seconds)
    except (TimeoutError, asyncio.TimeoutError):  # (the same class from Python 3.11 on)
        if call_runs_out:
            raise pp.ParallelTimeoutError(
                f"perfkit.Parallel: no task started within timeout={call_timeout} s: the dask cluster "
                "has no worker (are its workers started, and can they reach the scheduler?)"
            ) from None
        raise TimeoutError(
            f"perfkit.Parallel: the dask cluster has no worker after {seconds} s "
            "(are its workers started, and can they reach the scheduler?); to wait longer: "
            f"parallel_config(backend='dask', wait_for_workers_timeout={max(10, 2 * seconds)})"
        ) from None
    except Exception:
        if client.status in ("closing", "closed"):
            # (dask's own: the probe "cancelled for reason: unknown", naming perfkit's key)
            from distributed.client import ClosedClientError

            raise ClosedClientError(
                f"perfkit.Parallel: the dask Client {_CLOSED} during the call, while it waited for a worker"
            ) from None
        raise
    finally:
        if client.status == "running":
            client.cancel([probe])
    return client.nthreads()


def _probe():
    return None


def _large_graph_bytes():
    try:
        import dask
        from dask.utils import parse_bytes

        return parse_bytes(dask.config.get("distributed.admin.large-graph-warning-threshold"))
    except Exception:  # noqa: BLE001 - an older dask without the setting: its default
        return 10_000_000


def _is_unsendable_result(exc):
    # (distributed.protocol.serialize's message, a worker's pickling error as text)
    return type(exc) is TypeError and str(exc).startswith("Could not serialize object of type")


def _is_killed_worker(exc):
    try:
        from distributed import KilledWorker
    except ImportError:
        return False
    return isinstance(exc, KilledWorker)


def run_chunk(chunk, host_threads, keep_done=False, recording=None):
    """A batch on a dask worker: ``(seconds it took, results, tree)``. A
    Parallel inside a task stays within this task's share of its machine's
    CPUs (shared with every worker thread on the machine). `keep_done`: a
    task's error comes back with the results of the tasks before it (the
    call's retries= sends the batch again from the task that failed).
    `recording`: ``(builtins, clock, process token)`` of the caller's
    profiler while it records the call (see _recording_for), else None;
    `tree`: then the calls of the batch's tasks, as the caller's profiler
    adopts them (_native.adopt_dask_tree; a failed batch's too: those up to
    its error, as cProfile keeps them), else None."""
    address = None
    try:
        from distributed import get_worker

        worker = get_worker()
        threads = host_threads.get(worker.ip) or worker.state.nthreads
        address = worker.address
    except Exception:  # noqa: BLE001 - not in a worker (called directly), or an older dask
        threads = 1
    if recording is not None and recording[2] == _dask_worker.PROCESS_TOKEN:
        recording = None  # the caller's own process: its profiler records this thread itself
    with pp._within_cpus(pp._share_of_one_of(threads)):
        started = time.perf_counter()
        if recording is not None:
            where = f"{address} " if address else ""
            results, failed, tree = _dask_worker.run(
                chunk, recording[:2], f"dask worker {where}(pid {os.getpid()})"
            )
            if failed is None:
                return time.perf_counter() - started, results, tree
            index, task, exc = failed
            try:
                # (as parallel._run_chunk notes it)
                function, args, kwargs = pp._unpack(task, index)
                pp._add_note(
                    exc, f"perfkit.Parallel: raised by task {index} ({task_label(function, args, kwargs)})"
                )
            except TypeError as bad:  # (not a task delayed() made)
                exc = bad
            return None, TaskRaised.of(exc, results if keep_done else []), tree
        results = []
        try:
            if keep_done:
                for item in chunk:
                    results += pp._run_chunk((item,))
            else:
                results = pp._run_chunk(chunk)
        except BaseException as exc:  # noqa: BLE001 - the caller raises it (below)
            # Returned, not raised: dask logs a task's exception on its
            # worker at ERROR level (with the task's arguments, in older
            # versions), where joblib's dask backend is silent; and a
            # SystemExit or KeyboardInterrupt raised through dask ends its
            # worker (and the next three it is given to: KilledWorker).
            return None, TaskRaised.of(exc, results), None
        return time.perf_counter() - started, results, None


def _recording_for():
    """What a batch sent now tells its worker to record with: the caller's
    profiler's ``(builtins, clock)`` while it records (and its workers with
    it), and this process's token (a worker in this very process records
    nothing); None when nothing records here."""
    recording = _native.recording_now()
    return None if recording is None else (*recording, _dask_worker.PROCESS_TOKEN)


class TaskRaised:
    """A task's exception, as a batch's result: the exception (or a stand-in
    when it cannot be pickled), the worker's traceback, and the results of
    the batch's tasks before it when the call asked for them (else [])."""

    def __init__(self, exc, traceback_text, done=()):
        self.exc = exc
        self.traceback_text = traceback_text
        self.done = list(done)

    @classmethod
    def of(cls, exc, done=()):
        import traceback

        import cloudpickle

        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        exc.__traceback__ = None  # (not sent: it holds the worker's frames)
        try:
            cloudpickle.loads(cloudpickle.dumps(exc))
        except Exception:  # noqa: BLE001 - any __reduce__ may fail, either way
            exc = pp.TaskError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
        return cls(exc, text, done)

    def raise_here(self, first, chunk):
        exc = self.exc
        where = f"{pp._tasks_text(first, len(chunk))} on a dask worker"
        exc.__cause__ = pp.RemoteTraceback(f"\n{where}; its traceback there:\n\n{self.traceback_text}")
        try:
            raise exc
        finally:
            del exc  # (this frame and the exception would hold each other)


def _secede():
    """Leave the worker's thread pool when this call runs inside a dask task
    (a nested call), so that the tasks it waits for can run; as joblib does.
    Not when the task left it already (it called dask's secede itself)."""
    try:
        from distributed import secede
        from distributed.threadpoolexecutor import thread_state as pool_thread
        from distributed.worker import thread_state
    except ImportError:
        return False
    if not hasattr(thread_state, "execution_state") or getattr(pool_thread, "proceed", True) is False:
        return False
    secede()
    return True


def _rejoin():
    from distributed import rejoin

    rejoin()
