"""perfkit.Parallel's ``dask`` backend: one call's tasks, in batches, on an
existing dask.distributed ``Client``.

Owns what a call does on a cluster: batch sizing by the workers' measured
time, a window of batches in flight (``pre_dispatch``), sending a large
argument that several batches share once (scattered, as joblib's dask
backend does), timeouts, fail-fast cancelling, and nested calls inside
tasks. It must not start or close clusters or Clients (the user's), and
holds no state between calls.
"""

from __future__ import annotations

import itertools
import queue
import time
import uuid
import weakref

from perfkit import parallel as pp
from perfkit._pool_common import task_label

# A batch is about this much of a worker's time: dask costs ~1 ms of the
# scheduler's per task, and a round trip over the network.
TARGET_BATCH_SECONDS = 0.1
# Batches shrink towards a call's end (every worker busy to the last), to no less than this.
MIN_TAIL_BATCH_SECONDS = 0.01
# An argument this large that a later batch carries again is scattered, sent once.
SCATTER_FROM_BYTES = 64 << 10
SCATTER_AT_ONCE_BYTES = 1 << 20
# Argument types never worth scattering (small, or copied by value anyway).
_PLAIN = (int, float, complex, bool, str, type(None))


class DaskCall:
    def __init__(self, parallel, client, iterable, total, progress):
        self.parallel = parallel
        self.client = client
        self.iterable = iterable
        self.total = total
        self.progress = progress
        self.workers = max(1, sum(client.nthreads().values()))
        self.window = pp._dispatch_window(parallel.pre_dispatch, self.workers)
        self.ordered = parallel.return_as != "generator_unordered"
        self.done = queue.SimpleQueue()
        # id(argument) -> [weak reference, batch first met in, its size, or
        # its future once scattered]: weak, so that a generator's arguments
        # (and their data on the cluster) go when their batches are done.
        self.known = {}
        self.addresses = []
        # parallel_config(backend="dask", scatter=[...]): sent to every worker before the first batch.
        self.given = list(parallel._setting("backend_params", {}).get("scatter") or ())

    def run(self):
        client = self.client
        tasks = enumerate(self.iterable)
        size = self.parallel.batch_size
        auto = size == "auto"
        if auto:
            size = 1  # until a batch has been timed
        costs = pp._RecentCosts()
        in_flight = {}  # future key -> (first index, task count, future)
        in_order = pp._InOrder()
        dispatched = 0
        exhausted = False
        completed = False
        seceded = False
        if self.given:
            futures = client.scatter(self.given, broadcast=True, hash=False)
            for value, future in zip(self.given, futures):
                # (held by self.given for the call: a plain callable stands in for a weak reference)
                self.known[id(value)] = [lambda value=value: value, -1, future]
        batches = itertools.count()
        try:
            while True:
                while not exhausted and len(in_flight) < self.window:
                    chunk = list(itertools.islice(tasks, size))
                    if not chunk:
                        exhausted = True
                        break
                    chunk = self._prepared(chunk, next(batches))
                    function = chunk[0][1][0]
                    key = f"perfkit.Parallel-{task_label(function, limit=0).rstrip('()')}-{uuid.uuid4().hex}"
                    future = client.submit(run_chunk, chunk, key=key, pure=False)
                    future.add_done_callback(self.done.put)
                    in_flight[future.key] = (chunk[0][0], len(chunk), future)
                    dispatched += len(chunk)
                    self.parallel.n_dispatched_tasks = dispatched
                if not in_flight:
                    break
                if not seceded:
                    seceded = _secede()  # a task waiting for tasks must not hold its worker's thread
                try:
                    future = self.done.get(timeout=self.parallel.timeout)
                except queue.Empty:
                    self._timeout(in_flight)
                entry = in_flight.pop(future.key, None)
                if entry is None:
                    continue
                first, count, _ = entry
                elapsed, results = future.result()  # a task's error is raised here
                if auto:
                    per_task = costs.add(max(elapsed, 1e-7) / max(count, 1))
                    left = (
                        self.total - dispatched if self.total is not None else pp._tasks_left(self.iterable)
                    )
                    size = pp._share_batch_size(
                        per_task, left, self.workers, TARGET_BATCH_SECONDS, MIN_TAIL_BATCH_SECONDS, 100_000
                    )
                self.progress.update(count)
                if self.ordered:
                    yield from in_order.add(first, results)
                else:
                    yield results
            completed = True
        finally:
            if not completed and in_flight:
                # Fail fast (an error, a timeout, a closed generator, Ctrl-C):
                # queued batches are dropped; one already running runs to its end.
                client.cancel([f for _, _, f in in_flight.values()])
            if seceded:
                _rejoin()
            self.progress.close(completed)

    def _prepared(self, chunk, batch):
        """The batch's tasks, each large argument replaced by its scattered
        future (dask hands the task the value): one over SCATTER_AT_ONCE_BYTES
        at once (dask warns of graphs that carry such data, and the
        scheduler then runs the task where its data went), one over
        SCATTER_FROM_BYTES once an earlier batch carried it too, so that it
        is sent once, not with every batch. One round trip per batch."""
        tasks = [(index, task, pp._unpack(task, index)) for index, task in chunk]
        fresh = {}
        for _, _, (_, args, kwargs) in tasks:
            for value in itertools.chain(args, kwargs.values()):
                if type(value) not in _PLAIN:
                    self._note(value, batch, fresh)
        if fresh:
            values = list(fresh.values())
            # All to one worker, where the scheduler then runs the batch (spread
            # over the workers, a batch's task would fetch the rest from the others).
            try:
                futures = self.client.scatter(values, workers=self._worker_for(batch), hash=False)
            except Exception:  # noqa: BLE001 - that worker left the cluster: let dask place the data
                self.addresses = []
                futures = self.client.scatter(values, hash=False)
            for value, future in zip(values, futures):
                self.known[id(value)][2] = future
        out = []
        for index, task, (function, args, kwargs) in tasks:
            new_args = tuple(self._sent_as(v) for v in args)
            new_kwargs = {k: self._sent_as(v) for k, v in kwargs.items()}
            same = all(a is b for a, b in zip(new_args, args)) and all(
                new_kwargs[k] is v for k, v in kwargs.items()
            )
            out.append((index, task if same else (function, new_args, new_kwargs)))
        return out

    def _worker_for(self, batch):
        if not self.addresses:
            self.addresses = sorted(self.client.nthreads())
        return [self.addresses[batch % len(self.addresses)]] if self.addresses else None

    def _note(self, value, batch, fresh):
        entry = self.known.get(id(value))
        if entry is not None and entry[0]() is value:
            if entry[1] != batch and isinstance(entry[2], int) and entry[2] >= SCATTER_FROM_BYTES:
                fresh[id(value)] = value  # a second batch carries it: send it once from now on
            return
        known, key = self.known, id(value)

        def forget(ref):
            if known.get(key, (None,))[0] is ref:
                del known[key]  # and with it the future: the cluster may drop the data

        try:
            ref = weakref.ref(value, forget)
        except TypeError:
            return  # not weak-referenceable (a tuple, a list): joblib does not scatter those either
        from dask.sizeof import sizeof

        size = sizeof(value)
        self.known[id(value)] = [ref, batch, size]
        if size >= SCATTER_AT_ONCE_BYTES:
            fresh[id(value)] = value

    def _sent_as(self, value):
        if type(value) in _PLAIN:
            return value
        entry = self.known.get(id(value))
        if entry is not None and not isinstance(entry[2], int) and entry[0]() is value:
            return entry[2]
        return value

    def _timeout(self, in_flight):
        firsts = sorted((first, count) for first, count, _ in in_flight.values())
        what = ", ".join(f"task {a}" if n == 1 else f"tasks {a}–{a + n - 1}" for a, n in firsts[:5])
        if len(firsts) > 5:
            what += ", …"
        raise pp.ParallelTimeoutError(
            f"perfkit.Parallel: {what} did not finish within timeout={self.parallel.timeout} s on the "
            "dask cluster; they were cancelled (a task already running there runs to its end)"
        )


def run_chunk(chunk):
    """A batch on a dask worker: ``(seconds it took, results)``. A Parallel
    inside a task stays within the worker's share of its machine's CPUs."""
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except Exception:  # noqa: BLE001 - not in a worker (a test calling it directly), or an older dask
        threads = 1
    pp._nested.share = max(1, pp.cpu_count() // max(1, threads))
    started = time.perf_counter()
    try:
        results = pp._run_chunk(chunk)
        return time.perf_counter() - started, results
    finally:
        pp._nested.share = None


def _secede():
    """Leave the worker's thread pool when this call runs inside a dask task
    (a nested call), so that the tasks it waits for can run; as joblib does."""
    try:
        from distributed import secede
        from distributed.worker import thread_state
    except ImportError:
        return False
    if not hasattr(thread_state, "execution_state"):
        return False
    secede()
    return True


def _rejoin():
    from distributed import rejoin

    rejoin()
